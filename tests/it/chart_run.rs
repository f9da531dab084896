//! The chart, run: the containers that `helm template` renders are started
//! with the real binary as Kubernetes would start them — the image's
//! ENTRYPOINT, CMD, ENV and USER from the `Dockerfile`, the pod's
//! `command`/`args`, its environment (Secret values resolved from the
//! rendered Secret, the service-link variables Kubernetes injects for the
//! namespace's Services added), its mounted `ConfigMap` — first the migration
//! Job, then three replicas on loopback ports against one PostgreSQL
//! database, behind the real Envoy with `deploy/envoy-front.yaml`.
//!
//! PostgreSQL only (replicas share state through it).

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use portcullis::proto::v1::{
    self as pb, auth_service_client::AuthServiceClient, user_service_client::UserServiceClient,
};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};
use tonic::{Code, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    chart::{self, Manifests, RELEASE},
    envoy::Envoy,
    http::{poll, request},
    support::{Backend, TEST_MFA_KEY, TestDb, bearer},
};

// === The image ===

/// What the Dockerfile's last stage gives a container.
struct Image {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    /// `uid[:gid]`.
    user: String,
}

impl Image {
    /// Reads ENTRYPOINT, CMD, ENV and USER of the Dockerfile's last stage.
    fn from_dockerfile() -> Self {
        let text = std::fs::read_to_string(chart::root().join("Dockerfile")).unwrap();
        let last_stage = text.rsplit_once("\nFROM ").expect("a multi-stage Dockerfile").1;
        let mut image = Image { entrypoint: vec![], cmd: vec![], env: vec![], user: "0".into() };
        for line in last_stage.lines() {
            let Some((instruction, rest)) = line.split_once(' ') else { continue };
            let exec_form = || serde_json::from_str::<Vec<String>>(rest).expect("exec form (JSON array)");
            match instruction {
                "ENTRYPOINT" => image.entrypoint = exec_form(),
                "CMD" => image.cmd = exec_form(),
                "ENV" => {
                    let (name, value) = rest.split_once('=').expect("ENV NAME=value");
                    image.env.push((name.to_owned(), value.to_owned()));
                }
                "USER" => rest.clone_into(&mut image.user),
                _ => {}
            }
        }
        image
    }

    fn uid(&self) -> u64 {
        self.user.split(':').next().unwrap().parse().expect("a numeric USER")
    }
}

// === Containers, as the kubelet starts them ===

/// One container of a rendered workload, ready to start: its argv, its
/// environment, and its mounted files under a folder standing in for `/`.
struct Container {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    root: tempfile::TempDir,
}

impl Container {
    /// `workload`'s container from `manifests`, with `links` (service-link
    /// variables) in its environment as the kubelet puts them: before the
    /// container's own.
    fn new(manifests: &Manifests, workload: &Value, image: &Image, links: &[(String, String)]) -> Self {
        let spec = &workload["spec"]["template"]["spec"];
        let container = &spec["containers"][0];
        let strings = |v: &Value| -> Option<Vec<String>> {
            v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        };
        // Kubernetes: command replaces ENTRYPOINT (and drops CMD); args replaces CMD.
        let argv = match (strings(&container["command"]), strings(&container["args"])) {
            (Some(command), args) => [command, args.unwrap_or_default()].concat(),
            (None, Some(args)) => [image.entrypoint.clone(), args].concat(),
            (None, None) => [image.entrypoint.clone(), image.cmd.clone()].concat(),
        };
        assert_eq!(spec["securityContext"]["runAsUser"].as_u64(), Some(image.uid()), "the image's user");

        // Mounted ConfigMaps and emptyDirs, under `root`.
        let root = tempfile::tempdir().unwrap();
        let volumes = spec["volumes"].as_array().unwrap();
        let mut mounts = Vec::new();
        for mount in container["volumeMounts"].as_array().unwrap() {
            let path = mount["mountPath"].as_str().unwrap();
            let volume = volumes.iter().find(|v| v["name"] == mount["name"]).unwrap();
            let target = root.path().join(path.trim_start_matches('/'));
            if let Some(name) = volume["configMap"]["name"].as_str() {
                let data = &manifests.get("ConfigMap", name)["data"];
                if let Some(key) = mount["subPath"].as_str() {
                    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
                    std::fs::write(&target, data[key].as_str().unwrap()).unwrap();
                } else {
                    std::fs::create_dir_all(&target).unwrap();
                    for (key, value) in data.as_object().unwrap() {
                        std::fs::write(target.join(key), value.as_str().unwrap()).unwrap();
                    }
                }
            } else if volume.get("emptyDir").is_some() {
                std::fs::create_dir_all(&target).unwrap();
            } else {
                panic!("volume {volume} is not supported by this test");
            }
            mounts.push((path.to_owned(), target));
        }
        let rebase = |value: String| {
            mounts
                .iter()
                .find(|(path, _)| value.starts_with(path.as_str()))
                .map_or(value.clone(), |(path, target)| {
                    format!("{}{}", target.display(), &value[path.len()..])
                })
        };

        let mut env: Vec<(String, String)> = image.env.clone();
        env.extend(links.iter().cloned());
        for var in container["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap().to_owned();
            if let Some(value) = var["value"].as_str() {
                env.push((name, rebase(value.to_owned())));
                continue;
            }
            let reference = &var["valueFrom"]["secretKeyRef"];
            let (secret, key) = (reference["name"].as_str().unwrap(), reference["key"].as_str().unwrap());
            match manifests.secret_data(secret).into_iter().find(|(k, _)| k == key) {
                Some((_, value)) => env.push((name, value)),
                None => {
                    assert_eq!(reference["optional"], true, "{name}: key {key} missing from Secret {secret}");
                }
            }
        }
        Self { argv, env, root }
    }

    /// The container's process, with the pod's environment only, and
    /// `extra` variables after it.
    fn command(&self, extra: &[(&str, String)]) -> Command {
        self.exec(&self.argv[1..], extra)
    }

    /// Another command in the container (`kubectl exec`): `portcullis` with
    /// `args`.
    fn exec(&self, args: &[String], extra: &[(&str, String)]) -> Command {
        // The image puts `portcullis` on the PATH; here it is cargo's build.
        let program = match self.argv[0].as_str() {
            "portcullis" => PathBuf::from(env!("CARGO_BIN_EXE_portcullis")),
            other => panic!("unexpected program {other}"),
        };
        let mut command = Command::new(program);
        command
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.root.path())
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .current_dir(self.root.path())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }
}

/// The variables Kubernetes gives every pod for each Service of the
/// namespace with a cluster IP (unless `enableServiceLinks: false`), with
/// made-up cluster IPs.
fn service_links(manifests: &Manifests) -> Vec<(String, String)> {
    let mut links = Vec::new();
    for (i, service) in manifests.of_kind("Service").into_iter().enumerate() {
        if service["spec"]["clusterIP"] == "None" {
            continue;
        }
        let ip = format!("10.96.0.{}", 10 + i);
        let name = service["metadata"]["name"].as_str().unwrap().to_uppercase().replace('-', "_");
        let ports = service["spec"]["ports"].as_array().unwrap();
        let first = ports[0]["port"].as_u64().unwrap();
        links.push((format!("{name}_SERVICE_HOST"), ip.clone()));
        links.push((format!("{name}_SERVICE_PORT"), first.to_string()));
        links.push((format!("{name}_PORT"), format!("tcp://{ip}:{first}")));
        for port in ports {
            let number = port["port"].as_u64().unwrap();
            let port_name = port["name"].as_str().unwrap().to_uppercase().replace('-', "_");
            let prefix = format!("{name}_PORT_{number}_TCP");
            links.push((format!("{name}_SERVICE_PORT_{port_name}"), number.to_string()));
            links.push((prefix.clone(), format!("tcp://{ip}:{number}")));
            links.push((format!("{prefix}_PROTO"), "tcp".into()));
            links.push((format!("{prefix}_PORT"), number.to_string()));
            links.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    assert!(links.iter().any(|(k, _)| k == "PORTCULLIS_PORT"), "the Service is named portcullis: {links:?}");
    links
}

// === Replicas ===

/// A running replica: the Deployment's container on loopback ports.
struct Replica {
    child: Child,
    grpc: SocketAddr,
    metrics: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Replica {
    /// Starts the container with its gRPC port at `grpc` (port 0: any) and
    /// waits until it listens; the addresses come from its JSON log.
    async fn start(container: &Container, grpc: SocketAddr) -> Self {
        let mut child = container
            .command(&[
                // Each pod has its own IP; here the replicas share loopback.
                ("PORTCULLIS_LISTEN_ADDR", grpc.to_string()),
                ("PORTCULLIS_METRICS_ADDR", "127.0.0.1:0".into()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn({
            let logs = Arc::clone(&logs);
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    logs.lock().unwrap().push(line);
                }
            }
        });
        let find = |lines: &[String], message: &str| -> Option<SocketAddr> {
            lines.iter().find_map(|line| {
                let entry: Value = serde_json::from_str(line).ok()?;
                (entry["fields"]["message"] == message)
                    .then(|| entry["fields"]["address"].as_str()?.parse().ok())?
            })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let (grpc, metrics) = loop {
            let found = {
                let lines = logs.lock().unwrap();
                (find(&lines, "portcullis listening"), find(&lines, "serving metrics at /metrics"))
            };
            if let (Some(grpc), Some(metrics)) = found {
                break (grpc, metrics);
            }
            let log = || logs.lock().unwrap().join("\n");
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the replica exited ({status}) before listening; its log:\n{}", log());
            }
            assert!(Instant::now() < deadline, "the replica did not listen within 30 s; its log:\n{}", log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Self { child, grpc, metrics, logs }
    }

    fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc)).unwrap().connect_lazy()
    }

    fn auth(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel())
    }

    /// A counter (or gauge) from `/metrics`.
    async fn metric(&self, name: &str) -> f64 {
        let body = request(self.metrics, "GET", "/metrics", &[]).await.body;
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
    }

    /// Sends SIGTERM, as the kubelet does.
    async fn terminate(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
        assert!(status.success());
    }

    /// Waits for the exit, at most `limit`; the exit status and how long it took.
    async fn exit_within(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("not stopped within {limit:?}; log:\n{}", self.log()))
            .unwrap();
        (status, started.elapsed())
    }

    fn log(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

/// The release, running: the Job has migrated, three replicas serve, Envoy
/// is in front.
struct Release {
    db: TestDb,
    manifests: Manifests,
    deployment: Container,
    replicas: Vec<Replica>,
    envoy: Envoy,
    /// The rendered configuration, as the server reads it.
    config: portcullis::config::Config,
}

impl Release {
    /// `None` (skipped) where helm or Envoy cannot run here.
    async fn start(backend: &Backend) -> Option<Self> {
        if !chart::tools_here() {
            return None;
        }
        let db = TestDb::create(backend).await;
        // The secrets, as an operator's values file gives them. Rate limits
        // off: the test logs in 50 times from one address (the lockout is
        // what the brute-force part measures).
        let values = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            values.path(),
            format!(
                "secrets:\n  databaseUrl: {}\n  mfaKey: {TEST_MFA_KEY}\nconfig:\n  \
                 rate_limit_ip: 0\n  rate_limit_account: 0\n  rate_limit_pair: 0\n",
                serde_json::to_string(&db.url).unwrap()
            ),
        )
        .unwrap();
        let manifests = chart::render(&[values.path().to_str().unwrap()], &[]);
        let image = Image::from_dockerfile();
        let links = service_links(&manifests);
        let config_text = manifests.config_file(RELEASE);
        let config_path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(config_path.path(), &config_text).unwrap();
        let config = portcullis::config::Config::load(Some(config_path.path())).unwrap();

        // The hook Job first: `portcullis migrate`.
        let job = Container::new(&manifests, manifests.job(), &image, &links);
        assert_eq!(job.argv, ["portcullis", "migrate"]);
        let output = job.command(&[]).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "the migration Job failed:\n{stderr}");
        assert!(stderr.contains("migrations applied"), "{stderr}");

        let deployment = Container::new(&manifests, manifests.deployment(), &image, &links);
        assert_eq!(deployment.argv, ["portcullis", "serve"]);
        for (name, _) in &links {
            assert!(deployment.env.iter().any(|(k, _)| k == name), "{name} is set");
        }
        let replicas = manifests.deployment()["spec"]["replicas"].as_u64().unwrap();
        assert_eq!(replicas, 3);
        let mut started = Vec::new();
        for _ in 0..replicas {
            started.push(Replica::start(&deployment, SocketAddr::from(([127, 0, 0, 1], 0))).await);
        }
        let envoy = Envoy::run(envoy_front(&started)).await?;
        Some(Self { db, manifests, deployment, replicas: started, envoy, config })
    }

    fn envoy_channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.envoy.addr)).unwrap().connect_lazy()
    }

    /// Makes the first admin as the NOTES say (`kubectl exec … portcullis
    /// user create`), then logs it in through Envoy.
    async fn admin_token(&self) -> String {
        let output = self
            .deployment
            .exec(
                &["user", "create", "--email", "admin@example.com", "--role", "admin"].map(String::from),
                &[("PORTCULLIS_USER_PASSWORD", "chart admin password".into())],
            )
            .output()
            .await
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        login(&mut AuthServiceClient::new(self.envoy_channel()), "admin@example.com", "chart admin password")
            .await
            .expect("the admin logs in through Envoy")
    }

    async fn create_user(&self, admin: &str, email: &str, password: &str) {
        UserServiceClient::new(self.envoy_channel())
            .create_user(bearer(
                admin,
                pb::CreateUserRequest {
                    email: email.into(),
                    password: password.into(),
                    role: pb::Role::User as i32,
                    ..Default::default()
                },
            ))
            .await
            .unwrap();
    }

    /// SIGTERM to every replica; each exits 0.
    async fn stop(mut self) {
        let limit = self.config.shutdown_timeout + Duration::from_secs(5);
        for replica in &mut self.replicas {
            replica.terminate().await;
            let (status, _) = replica.exit_within(limit).await;
            assert!(status.success(), "{status}; log:\n{}", replica.log());
        }
        drop(self.envoy);
        self.db.drop_database().await;
        drop(self.manifests);
    }
}

/// `deploy/envoy-front.yaml` on loopback: the headless Service's name
/// replaced by the replicas' addresses (what its DNS answer would list).
fn envoy_front(replicas: &[Replica]) -> String {
    let mut config = std::fs::read_to_string(chart::root().join("deploy/envoy-front.yaml")).unwrap();
    let mut replace = |from: &str, to: &str| {
        assert_eq!(config.matches(from).count(), 1, "deploy/envoy-front.yaml should hold `{from}` once");
        config = config.replace(from, to);
    };
    replace("{ address: 0.0.0.0, port_value: 50051 }", "{ address: 127.0.0.1, port_value: 0 }");
    replace("port_value: 9901", "port_value: 0");
    replace("type: STRICT_DNS", "type: STATIC");
    let endpoint = "        - endpoint:\n            address:\n              socket_address: { address: portcullis-headless.auth.svc.cluster.local, port_value: 50051 }\n";
    let mut endpoints = String::new();
    for replica in replicas {
        use std::fmt::Write as _;
        let _ = write!(
            endpoints,
            "        - endpoint:\n            address:\n              socket_address: {{ address: 127.0.0.1, port_value: {} }}\n",
            replica.grpc.port()
        );
    }
    replace(endpoint, &endpoints);
    config
}

async fn login(
    auth: &mut AuthServiceClient<Channel>,
    email: &str,
    password: &str,
) -> Result<String, tonic::Status> {
    let response = auth
        .login(pb::LoginRequest { email: email.into(), password: password.into(), ..Default::default() })
        .await?
        .into_inner();
    match response.result {
        Some(pb::login_response::Result::Session(session)) => Ok(session.token),
        other => panic!("expected a session, got {other:?}"),
    }
}

async fn validate(
    auth: &mut AuthServiceClient<Channel>,
    token: &str,
) -> Result<pb::Principal, tonic::Status> {
    auth.validate_token(pb::ValidateTokenRequest {
        credential: Some(pb::validate_token_request::Credential::Token(token.into())),
        required_scopes: vec![],
    })
    .await
    .map(|r| r.into_inner().principal.unwrap())
}

async fn health(channel: Channel) -> i32 {
    HealthClient::new(channel)
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_runs_three_replicas_behind_envoy_as_one_service() {
    let Some(backend) = Backend::postgres() else { return };
    let Some(release) = Release::start(&backend).await else { return };
    let admin = release.admin_token().await;

    // Every replica serves: each answers health, and Envoy's round robin
    // spreads validations over all three.
    let mut through_envoy = AuthServiceClient::new(release.envoy_channel());
    for replica in &release.replicas {
        assert_eq!(health(replica.channel()).await, ServingStatus::Serving as i32);
    }
    for _ in 0..30 {
        validate(&mut through_envoy, &admin).await.unwrap();
    }
    let valid = "portcullis_token_validations_total{source=\"validate_token\",result=\"valid\"}";
    for (i, replica) in release.replicas.iter().enumerate() {
        let count = replica.metric(valid).await;
        assert!(count >= 1.0, "replica {i} served no validation through Envoy");
    }

    // A logout on one replica is refused by the other two: how soon.
    release.create_user(&admin, "rita@example.com", "rita password 1").await;
    let mut delays = Vec::new();
    for attempt in 0..50 {
        let mut on = release.replicas[attempt % 3].auth();
        let token = login(&mut on, "rita@example.com", "rita password 1").await.unwrap();
        let mut others: Vec<_> = (1..3).map(|d| release.replicas[(attempt + d) % 3].auth()).collect();
        for other in &mut others {
            // Cached there.
            validate(other, &token).await.unwrap();
            validate(other, &token).await.unwrap();
        }
        on.logout(pb::LogoutRequest { token: token.clone() }).await.unwrap();
        let logged_out = Instant::now();
        for other in &mut others {
            loop {
                match validate(other, &token).await {
                    Err(status) => {
                        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
                        break;
                    }
                    Ok(_) => {
                        assert!(
                            logged_out.elapsed() < Duration::from_secs(1),
                            "a replica accepts a logged-out token after 1 s"
                        );
                    }
                }
            }
        }
        delays.push(logged_out.elapsed());
    }
    delays.sort();
    println!(
        "revocation: a logout on one replica refused by the other two after at most {:?} (median {:?}) over {} logouts",
        delays[delays.len() - 1],
        delays[delays.len() / 2],
        delays.len()
    );

    // 200 wrong passwords in parallel, spread over the replicas, cost at most
    // the lockout threshold in password checks.
    release.create_user(&admin, "victim@example.com", "the real password 1").await;
    let checks = "portcullis_password_verifications_total";
    let mut before = 0.0;
    for replica in &release.replicas {
        before += replica.metric(checks).await;
    }
    let attempts: Vec<_> = (0..200)
        .map(|i| {
            let mut auth = release.replicas[i % 3].auth();
            tokio::spawn(async move {
                login(&mut auth, "victim@example.com", &format!("wrong guess number {i}")).await
            })
        })
        .collect();
    // Refused as a wrong password, or shed (a full hashing queue, or the
    // request time limit on two shared cores): never a session.
    let mut answers = std::collections::BTreeMap::<String, u32>::new();
    for attempt in attempts {
        let status = attempt.await.unwrap().expect_err("a wrong password never logs in");
        assert!(
            matches!(status.code(), Code::Unauthenticated | Code::ResourceExhausted | Code::DeadlineExceeded),
            "{status:?}"
        );
        *answers.entry(format!("{:?}", status.code())).or_default() += 1;
    }
    let mut after = 0.0;
    for replica in &release.replicas {
        after += replica.metric(checks).await;
    }
    let threshold = f64::from(release.config.lockout_threshold);
    println!(
        "200 parallel wrong passwords over 3 replicas: {} password checks (lockout_threshold {threshold}); answers {answers:?}",
        after - before
    );
    assert!(after - before >= 1.0 && after - before <= threshold, "{} password checks", after - before);

    release.stop().await;
}

/// The rolling restart: a client validating without pause through Envoy
/// while each replica in turn gets SIGTERM and is started again sees no
/// failed validation; a Watch stream on the terminated replica sees
/// NOT_SERVING and then ends; each replica exits 0 within `shutdown_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_rolling_restart_loses_no_validation() {
    let Some(backend) = Backend::postgres() else { return };
    let Some(mut release) = Release::start(&backend).await else { return };
    let admin = release.admin_token().await;

    // The client: validations through Envoy, one after the other, no pause.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::new())));
    let client = tokio::spawn({
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        let mut auth = AuthServiceClient::new(release.envoy_channel());
        let token = admin.clone();
        async move {
            while !stop.load(Ordering::Relaxed) {
                match validate(&mut auth, &token).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        failed.lock().unwrap().push(status);
                        0
                    }
                };
            }
        }
    });

    let limit = release.config.shutdown_timeout;
    for i in 0..release.replicas.len() {
        let replica = &mut release.replicas[i];
        let mut watch = HealthClient::new(replica.channel())
            .watch(HealthCheckRequest { service: String::new() })
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(first.status, ServingStatus::Serving as i32);
        replica.terminate().await;
        let terminated = Instant::now();
        let next = tokio::time::timeout(Duration::from_secs(1), watch.message())
            .await
            .expect("NOT_SERVING within 1 s of SIGTERM");
        assert_eq!(next.unwrap().unwrap().status, ServingStatus::NotServing as i32);
        // Then the stream ends (cleanly or with a status), within the bound.
        while let Ok(Some(update)) =
            tokio::time::timeout(limit, watch.message()).await.expect("the Watch stream ends")
        {
            assert_eq!(update.status, ServingStatus::NotServing as i32);
        }
        let (status, _) = replica
            .exit_within(limit.saturating_sub(terminated.elapsed()) + Duration::from_millis(500))
            .await;
        assert!(status.success(), "replica {i}: {status}; log:\n{}", replica.log());
        println!("replica {i} exited 0, {:?} after SIGTERM", terminated.elapsed());

        // Started again on its address; Envoy sees it healthy before the next.
        let address = replica.grpc;
        release.replicas[i] = Replica::start(&release.deployment, address).await;
        let admin_addr = release.envoy.admin;
        let healthy = format!("portcullis::{address}::health_flags::healthy");
        poll(&format!("Envoy to see {address} healthy"), Duration::from_secs(30), || {
            let healthy = healthy.clone();
            async move {
                let body = request(admin_addr, "GET", "/clusters", &[]).await.body;
                body.lines().any(|l| l == healthy).then_some(())
            }
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    let failed = failed.lock().unwrap().clone();
    println!(
        "rolling restart of 3 replicas: {} validations through Envoy, {} failed",
        ok.load(Ordering::Relaxed),
        failed.len()
    );
    assert!(failed.is_empty(), "failed validations: {failed:?}");
    release.stop().await;
}

#[test]
fn the_image_runs_what_the_chart_expects() {
    let image = Image::from_dockerfile();
    assert_eq!(image.entrypoint, ["portcullis"]);
    assert_eq!(image.cmd, ["serve"]);
    assert!(image.uid() > 0, "a non-root USER");
    assert!(image.env.contains(&("PORTCULLIS_LISTEN_ADDR".into(), "0.0.0.0:50051".into())));
    let dockerignore = std::fs::read_to_string(chart::root().join(".dockerignore")).unwrap();
    assert!(dockerignore.lines().any(|l| l == "*"), "the build context is a list of what it needs");
    let license = std::fs::read_to_string(chart::root().join("LICENSE")).unwrap();
    assert!(license.contains("Apache License") && license.contains("Version 2.0, January 2004"));
}
