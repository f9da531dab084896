//! The Helm chart (`helm/portcullis`): `helm lint --strict` and `helm
//! template` for the default values and for each option's values file
//! (`helm/portcullis/ci/`), every manifest validated against the Kubernetes
//! schemas of the oldest and newest versions the chart supports
//! (kubernetes-validate, strict), and the properties operators rely on
//! asserted: gRPC probes on the gRPC port, the migration hook Job, a locked
//! down pod, no secret outside a Secret, no service links, a config file the
//! real server accepts.
//!
//! helm, Python and kubernetes-validate come from `scripts/tools`.

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use base64::Engine as _;
use serde_json::Value;

/// The release name the tests render with: a Service named `portcullis`, the
/// name whose service links once stopped start-up.
pub const RELEASE: &str = "portcullis";
/// The namespace the tests render into.
pub const NAMESPACE: &str = "auth";
/// Kubernetes versions whose schemas every manifest must satisfy: the chart's
/// `kubeVersion` floor (native gRPC probes) and the newest known.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.27.0", "1.37.0"];
/// Custom resources no Kubernetes schema covers; the tests check them.
const CUSTOM_KINDS: [&str; 2] =
    ["monitoring.coreos.com/v1/ServiceMonitor", "security.istio.io/v1/AuthorizationPolicy"];

/// The dummy secrets of `ci/secrets-values.yaml`, by their key in the Secret.
pub const DUMMY_SECRETS: [(&str, &str); 7] = [
    ("database_url", "postgres://portcullis:dummy-db-password-3Zq8@postgres.db.svc:5432/portcullis"),
    ("mfa_key", "ZHVtbXktbWZhLWtleS1mb3ItY2hhcnQtdGVzdHMhISE="),
    ("smtp_username", "dummy-smtp-user-9Kd2"),
    ("smtp_password", "dummy-smtp-password-Xw41"),
    ("captcha_googlev3_secret", "dummy-googlev3-secret-Rt55"),
    ("captcha_hcaptcha_secret", "dummy-hcaptcha-secret-Lp07"),
    ("captcha_turnstile_secret", "dummy-turnstile-secret-Qa63"),
];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn chart_dir() -> PathBuf {
    root().join("helm/portcullis")
}

fn tool(name: &str) -> PathBuf {
    root().join(".tools/venv/bin").join(name)
}

/// Whether helm and kubernetes-validate run here (`scripts/tools` installs
/// them; helm comes from a Linux x86-64 layer): where not, the calling test
/// has been skipped with the reason.
pub fn tools_here() -> bool {
    crate::support::tool("helm").is_some() && crate::support::tool("kubernetes-validate").is_some()
}

/// `-f` arguments for values files of `ci/`.
fn values_args(files: &[&str]) -> Vec<String> {
    files
        .iter()
        .flat_map(|f| ["-f".to_owned(), chart_dir().join("ci").join(f).display().to_string()])
        .collect()
}

/// `helm lint --strict` with the values files; panics with its output.
fn lint(files: &[&str]) {
    let output = Command::new(tool("helm"))
        .args(["lint", "--strict", "--namespace", NAMESPACE])
        .arg(chart_dir())
        .args(values_args(files))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "helm lint {files:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `helm template` with the values files and `--set` pairs: the
/// rendered text, or helm's error.
fn try_template(files: &[&str], set: &[(&str, &str)]) -> Result<String, String> {
    let mut command = Command::new(tool("helm"));
    command.args(["template", RELEASE]).arg(chart_dir()).args(["--namespace", NAMESPACE]);
    command.args(values_args(files));
    for (name, value) in set {
        command.arg("--set").arg(format!("{name}={value}"));
    }
    let output = command.output().unwrap();
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Rendered manifests, validated against the Kubernetes schemas.
pub struct Manifests {
    pub all: Vec<Value>,
    /// Custom resources no schema covered (`apiVersion/Kind`).
    pub unvalidated: Vec<String>,
}

/// Renders the chart and validates every manifest (see `tests/chart/manifests.py`).
pub fn render(files: &[&str], set: &[(&str, &str)]) -> Manifests {
    let text = try_template(files, set).unwrap_or_else(|err| panic!("helm template {files:?}: {err}"));
    let mut child = Command::new(tool("python"))
        .arg(root().join("tests/chart/manifests.py"))
        .args(KUBERNETES_VERSIONS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "manifests of {files:?} do not satisfy the Kubernetes schemas:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Value = serde_json::from_slice(&output.stdout).unwrap();
    Manifests {
        all: parsed["manifests"].as_array().unwrap().clone(),
        unvalidated: parsed["unvalidated"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect(),
    }
}

impl Manifests {
    pub fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.all.iter().filter(|m| m["kind"] == kind).collect()
    }

    /// The one manifest of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> &Value {
        let found: Vec<_> =
            self.of_kind(kind).into_iter().filter(|m| m["metadata"]["name"] == name).collect();
        assert_eq!(found.len(), 1, "expected one {kind} {name}, found {}", found.len());
        found[0]
    }

    pub fn deployment(&self) -> &Value {
        self.get("Deployment", RELEASE)
    }

    pub fn job(&self) -> &Value {
        self.get("Job", &format!("{RELEASE}-migrate"))
    }

    /// A Secret's data, decoded.
    pub fn secret_data(&self, name: &str) -> Vec<(String, String)> {
        let secret = self.get("Secret", name);
        secret["data"]
            .as_object()
            .map(|data| {
                data.iter()
                    .map(|(key, value)| {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(value.as_str().unwrap())
                            .unwrap();
                        (key.clone(), String::from_utf8(bytes).unwrap())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A `ConfigMap`'s file.
    pub fn config_file(&self, configmap: &str) -> String {
        self.get("ConfigMap", configmap)["data"]["portcullis.toml"].as_str().unwrap().to_owned()
    }
}

/// The pod spec and its only container.
fn pod(workload: &Value) -> (&Value, &Value) {
    let spec = &workload["spec"]["template"]["spec"];
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container");
    (spec, &containers[0])
}

/// The port number of the container port named `name`.
fn container_port(container: &Value, name: &str) -> u64 {
    container["ports"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()["containerPort"]
        .as_u64()
        .unwrap()
}

/// Non-root, read-only root file system, no capabilities, `RuntimeDefault`
/// seccomp, no privilege escalation, no service links, no API token.
#[track_caller]
fn assert_locked_down(workload: &Value) {
    let name = &workload["metadata"]["name"];
    let (spec, container) = pod(workload);
    assert_eq!(spec["enableServiceLinks"], false, "{name}: enableServiceLinks");
    assert_eq!(spec["automountServiceAccountToken"], false, "{name}: automountServiceAccountToken");
    let pod_security = &spec["securityContext"];
    let security = &container["securityContext"];
    assert_eq!(pod_security["runAsNonRoot"], true, "{name}: pod runAsNonRoot");
    assert!(pod_security["runAsUser"].as_u64().is_some_and(|u| u > 0), "{name}: pod runAsUser");
    assert_eq!(pod_security["seccompProfile"]["type"], "RuntimeDefault", "{name}: pod seccomp");
    assert_eq!(security["runAsNonRoot"], true, "{name}: container runAsNonRoot");
    assert!(security["runAsUser"].as_u64().is_some_and(|u| u > 0), "{name}: container runAsUser");
    assert_eq!(security["readOnlyRootFilesystem"], true, "{name}: readOnlyRootFilesystem");
    assert_eq!(security["allowPrivilegeEscalation"], false, "{name}: allowPrivilegeEscalation");
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]), "{name}: capabilities");
    assert!(security["capabilities"].get("add").is_none(), "{name}: no capability added");
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault", "{name}: seccomp");
    assert!(security.get("privileged").is_none_or(|p| p == false), "{name}: privileged");
    assert!(container["resources"]["limits"]["memory"].is_string(), "{name}: a memory limit");
}

/// Every value of `secrets`, raw and base64, is only ever inside a Secret.
#[track_caller]
fn assert_secrets_only_in_secrets(manifests: &Manifests, secrets: &[(&str, &str)]) {
    for manifest in manifests.all.iter().filter(|m| m["kind"] != "Secret") {
        let text = manifest.to_string();
        for (key, value) in secrets {
            let encoded = base64::engine::general_purpose::STANDARD.encode(value);
            assert!(
                !text.contains(value) && !text.contains(&encoded),
                "the {key} secret appears in {} {}",
                manifest["kind"],
                manifest["metadata"]["name"]
            );
        }
    }
}

/// What every rendering must be, whatever the option.
fn assert_common(manifests: &Manifests, tls: bool) {
    let allowed: BTreeSet<&str> = CUSTOM_KINDS.into_iter().collect();
    for kind in &manifests.unvalidated {
        assert!(allowed.contains(kind.as_str()), "no schema validated {kind}");
    }
    let deployment = manifests.deployment();
    let (spec, container) = pod(deployment);
    assert_locked_down(deployment);
    assert_eq!(container["args"], serde_json::json!(["serve"]));
    assert!(container.get("command").is_none(), "the image's ENTRYPOINT runs");
    assert!(
        spec["topologySpreadConstraints"].as_array().is_some_and(|t| !t.is_empty()),
        "replicas are spread"
    );
    let grpc_port = container_port(container, "grpc");
    let metrics_port = container_port(container, "metrics");
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let probe_spec = &container[probe];
        if tls {
            // Kubernetes' gRPC probes cannot speak TLS.
            assert_eq!(probe_spec["tcpSocket"]["port"], "grpc", "{probe}: {probe_spec}");
        } else {
            assert_eq!(probe_spec["grpc"]["port"].as_u64(), Some(grpc_port), "{probe}: {probe_spec}");
            if probe == "livenessProbe" {
                // Alive while the process runs: an outage or a drain must
                // not get the pod restarted.
                assert_eq!(probe_spec["grpc"]["service"], "liveness", "{probe}: {probe_spec}");
            } else {
                assert!(probe_spec["grpc"].get("service").is_none(), "{probe}: the server's overall health");
            }
        }
    }
    // The Service sends gRPC to the gRPC port and has the metrics port.
    let service = manifests.get("Service", RELEASE);
    assert_eq!(service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"]);
    let ports = service["spec"]["ports"].as_array().unwrap();
    let grpc = ports.iter().find(|p| p["name"] == "grpc").expect("a grpc port");
    assert_eq!((&grpc["appProtocol"], &grpc["targetPort"]), (&"grpc".into(), &"grpc".into()));
    assert!(ports.iter().any(|p| p["name"] == "metrics" && p["targetPort"] == "metrics"));
    // Pod labels carry the selector.
    let labels = deployment["spec"]["template"]["metadata"]["labels"].as_object().unwrap();
    for (key, value) in deployment["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(labels.get(key), Some(value), "pod label {key}");
    }
    // The disruption budget covers the pods.
    let pdb = manifests.get("PodDisruptionBudget", RELEASE);
    assert_eq!(pdb["spec"]["selector"], deployment["spec"]["selector"]);

    // The migration: a pre-install and pre-upgrade hook running `migrate`.
    let job = manifests.job();
    assert_locked_down(job);
    let hooks = job["metadata"]["annotations"]["helm.sh/hook"].as_str().unwrap();
    assert!(hooks.contains("pre-install") && hooks.contains("pre-upgrade"), "{hooks}");
    let (job_spec, job_container) = pod(job);
    assert_eq!(job_container["args"], serde_json::json!(["migrate"]));
    assert_eq!(job_spec["restartPolicy"], "Never");

    // The config file: accepted by the real server's loader, migrations left
    // to the Job, the ports the container declares, a drain that ends before
    // the kubelet kills.
    for configmap in [RELEASE.to_owned(), format!("{RELEASE}-migrate")] {
        let text = manifests.config_file(&configmap);
        let config = load_config(&text);
        assert!(!config.migrate_on_start, "{configmap}: migrate_on_start");
        assert_eq!(u64::from(config.listen_addr.port()), grpc_port);
        assert_eq!(config.metrics_addr.map(|a| u64::from(a.port())), Some(metrics_port));
        assert_eq!(config.tls_cert_file.is_some(), tls);
        for (key, _) in DUMMY_SECRETS {
            assert!(!text.contains(key), "{configmap} names the secret setting {key}");
        }
        let grace = spec["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(config.shutdown_timeout.as_secs() < grace, "shutdown_timeout must end before the kill");
        assert!(config.shutdown_drain <= config.shutdown_timeout);
    }
    // The environment names no value of a secret: each is a secretKeyRef.
    for workload in [deployment, job] {
        let (_, container) = pod(workload);
        for var in container["env"].as_array().unwrap() {
            let name = var["name"].as_str().unwrap();
            if DUMMY_SECRETS.iter().any(|(key, _)| name == format!("PORTCULLIS_{}", key.to_uppercase())) {
                assert!(var["valueFrom"]["secretKeyRef"].is_object(), "{name} must come from a Secret");
            }
        }
    }
}

/// Loads `text` with the server's own configuration loader.
fn load_config(text: &str) -> portcullis::config::Config {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(&path, text).unwrap();
    portcullis::config::Config::load(Some(&path)).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The env var names a container reads from `secret`.
fn env_from_secret(workload: &Value, secret: &str) -> BTreeSet<String> {
    let (_, container) = pod(workload);
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|var| var["valueFrom"]["secretKeyRef"]["name"] == secret)
        .map(|var| var["name"].as_str().unwrap().to_owned())
        .collect()
}

fn case(files: &[&str]) -> Manifests {
    lint(files);
    render(files, &[])
}

#[test]
fn chart_default_values_render_a_locked_down_release() {
    if !tools_here() {
        return;
    }
    let manifests = case(&[]);
    assert_common(&manifests, false);
    assert!(manifests.unvalidated.is_empty(), "{:?}", manifests.unvalidated);
    assert_eq!(manifests.deployment()["spec"]["replicas"], 3);
    // Nothing optional unless asked for.
    for kind in ["HorizontalPodAutoscaler", "ServiceMonitor", "NetworkPolicy", "AuthorizationPolicy"] {
        assert!(manifests.of_kind(kind).is_empty(), "{kind} without being enabled");
    }
    // No secret given: the Secret is empty, and the pods require its keys.
    assert!(manifests.secret_data(RELEASE).is_empty());
    let (_, container) = pod(manifests.deployment());
    let database =
        container["env"].as_array().unwrap().iter().find(|v| v["name"] == "PORTCULLIS_DATABASE_URL");
    assert_eq!(database.unwrap()["valueFrom"]["secretKeyRef"]["optional"], false);
}

#[test]
fn chart_secrets_reach_the_pods_only_through_secrets() {
    if !tools_here() {
        return;
    }
    let manifests = case(&["secrets-values.yaml"]);
    assert_common(&manifests, false);
    let values = std::fs::read_to_string(chart_dir().join("ci/secrets-values.yaml")).unwrap();
    for (key, value) in DUMMY_SECRETS {
        assert!(values.contains(value), "ci/secrets-values.yaml should hold the dummy {key}");
    }
    assert_secrets_only_in_secrets(&manifests, &DUMMY_SECRETS);
    // The chart's Secret holds them all; the Job's copy only the database URL.
    let data = manifests.secret_data(RELEASE);
    let expected: Vec<(String, String)> =
        DUMMY_SECRETS.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    assert_eq!(data.iter().cloned().collect::<BTreeSet<_>>(), expected.into_iter().collect());
    let migrate = manifests.secret_data(&format!("{RELEASE}-migrate"));
    assert_eq!(migrate, vec![("database_url".to_owned(), DUMMY_SECRETS[0].1.to_owned())]);
    let wanted: BTreeSet<String> =
        DUMMY_SECRETS.iter().map(|(k, _)| format!("PORTCULLIS_{}", k.to_uppercase())).collect();
    assert_eq!(env_from_secret(manifests.deployment(), RELEASE), wanted);
    assert_eq!(
        env_from_secret(manifests.job(), &format!("{RELEASE}-migrate")),
        BTreeSet::from(["PORTCULLIS_DATABASE_URL".to_owned()])
    );
    // A changed secret rolls the pods.
    let annotations = &manifests.deployment()["spec"]["template"]["metadata"]["annotations"];
    assert!(annotations["checksum/secret"].is_string());
}

#[test]
fn chart_existing_secret_is_used_and_none_is_made() {
    if !tools_here() {
        return;
    }
    let manifests = case(&["existing-secret-values.yaml"]);
    assert_common(&manifests, false);
    assert!(manifests.of_kind("Secret").is_empty(), "the chart makes no Secret");
    let names = env_from_secret(manifests.deployment(), "portcullis-credentials");
    assert!(names.contains("PORTCULLIS_DATABASE_URL") && names.contains("PORTCULLIS_MFA_KEY"), "{names:?}");
    assert_eq!(names.len(), DUMMY_SECRETS.len());
    assert_eq!(
        env_from_secret(manifests.job(), "portcullis-credentials"),
        BTreeSet::from(["PORTCULLIS_DATABASE_URL".to_owned()])
    );
}

#[test]
fn chart_tls_mounts_the_certificates_and_probes_the_port() {
    if !tools_here() {
        return;
    }
    let manifests = case(&["secrets-values.yaml", "tls-values.yaml"]);
    assert_common(&manifests, true);
    assert_secrets_only_in_secrets(&manifests, &DUMMY_SECRETS);
    let config = load_config(&manifests.config_file(RELEASE));
    let (spec, container) = pod(manifests.deployment());
    let secret_of = |volume: &str| {
        spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == volume).unwrap()["secret"]["secretName"]
            .clone()
    };
    assert_eq!(secret_of("tls"), "portcullis-tls");
    assert_eq!(secret_of("client-ca"), "portcullis-client-ca");
    let mounted = |file: &Path| {
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| file.starts_with(m["mountPath"].as_str().unwrap()))
    };
    for file in [&config.tls_cert_file, &config.tls_key_file, &config.tls_client_ca_file] {
        let file = file.as_ref().expect("set by the chart");
        assert!(mounted(file), "{} is not on a mounted volume", file.display());
    }
}

#[test]
fn chart_service_monitor_scrapes_the_metrics_port() {
    if !tools_here() {
        return;
    }
    let manifests = case(&["secrets-values.yaml", "servicemonitor-values.yaml"]);
    assert_common(&manifests, false);
    assert_secrets_only_in_secrets(&manifests, &DUMMY_SECRETS);
    let monitor = manifests.get("ServiceMonitor", RELEASE);
    let service = manifests.get("Service", RELEASE);
    for (key, value) in monitor["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(&service["metadata"]["labels"][key], value, "the monitor selects the Service by {key}");
    }
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    assert_eq!(monitor["spec"]["namespaceSelector"]["matchNames"], serde_json::json!([NAMESPACE]));
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack");
}

#[test]
fn chart_autoscaler_owns_the_replica_count() {
    if !tools_here() {
        return;
    }
    let manifests = case(&["secrets-values.yaml", "hpa-values.yaml"]);
    assert_common(&manifests, false);
    let hpa = manifests.get("HorizontalPodAutoscaler", RELEASE);
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], RELEASE);
    assert_eq!(
        (hpa["spec"]["minReplicas"].as_u64(), hpa["spec"]["maxReplicas"].as_u64()),
        (Some(3), Some(12))
    );
    assert!(manifests.deployment()["spec"].get("replicas").is_none(), "replicas is the autoscaler's");
}

#[test]
fn chart_network_policy_admits_the_two_ports() {
    if !tools_here() {
        return;
    }
    let manifests = case(&["secrets-values.yaml", "networkpolicy-values.yaml"]);
    assert_common(&manifests, false);
    let policy = manifests.get("NetworkPolicy", RELEASE);
    assert_eq!(policy["spec"]["podSelector"], manifests.deployment()["spec"]["selector"]);
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    let ports: Vec<_> = ingress.iter().map(|rule| rule["ports"][0]["port"].as_str().unwrap()).collect();
    assert_eq!(ports, ["grpc", "metrics"]);
    assert!(ingress.iter().all(|rule| rule["from"].is_array()), "both ports are limited to their peers");
    let egress = policy["spec"]["egress"].as_array().unwrap();
    assert!(egress[0]["ports"].as_array().unwrap().iter().any(|p| p["port"] == 53), "DNS is allowed");
    assert!(egress.iter().any(|rule| rule["ports"][0]["port"] == 5432), "PostgreSQL is allowed");
}

#[test]
fn chart_istio_policies_use_the_custom_provider() {
    if !tools_here() {
        return;
    }
    let manifests = case(&["secrets-values.yaml", "istio-values.yaml"]);
    assert_common(&manifests, false);
    let policy = manifests.get("AuthorizationPolicy", "storefront-portcullis");
    assert_eq!(policy["metadata"]["namespace"], "shop");
    assert_eq!(policy["spec"]["action"], "CUSTOM");
    assert_eq!(policy["spec"]["provider"]["name"], "portcullis");
    assert_eq!(policy["spec"]["selector"]["matchLabels"]["app"], "storefront");
    assert!(policy["spec"]["rules"].as_array().is_some_and(|r| !r.is_empty()));
    let pod_labels = |workload: &Value| workload["spec"]["template"]["metadata"]["labels"].clone();
    assert_eq!(pod_labels(manifests.deployment())["sidecar.istio.io/inject"], "true");
    // A sidecar would keep the Job's pod from completing.
    assert_eq!(pod_labels(manifests.job())["sidecar.istio.io/inject"], "false");
}

#[test]
fn chart_envoy_front_gets_a_headless_service() {
    if !tools_here() {
        return;
    }
    let manifests = case(&["secrets-values.yaml", "envoy-values.yaml"]);
    assert_common(&manifests, false);
    let headless = manifests.get("Service", &format!("{RELEASE}-headless"));
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(headless["spec"]["ports"][0]["appProtocol"], "grpc");
    assert_eq!(headless["spec"]["selector"], manifests.deployment()["spec"]["selector"]["matchLabels"]);
}

#[test]
fn chart_refuses_secrets_in_the_config_and_two_sources_of_secrets() {
    if !tools_here() {
        return;
    }
    for (setting, value) in [
        ("config.database_url", "postgres://x"),
        ("config.smtp_password", "x"),
        ("config.listen_addr", "0.0.0.0:1"),
        ("config.migrate_on_start", "true"),
    ] {
        let err = try_template(&[], &[(setting, value)]).expect_err(setting);
        assert!(err.contains(setting), "{setting}: {err}");
    }
    let err = try_template(&["secrets-values.yaml", "existing-secret-values.yaml"], &[]).unwrap_err();
    assert!(err.contains("existingSecret and secrets"), "{err}");
    let err = try_template(&[], &[("tls.enabled", "true")]).unwrap_err();
    assert!(err.contains("secretName"), "{err}");
}
