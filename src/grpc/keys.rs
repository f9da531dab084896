//! `portcullis.v1.KeyService`: API keys.

use std::sync::Arc;

use secrecy::ExposeSecret;
use tonic::{Request, Response, Status};

use super::{authenticated, convert, to_status};
use crate::{
    domain::{Domain, Error, KeyId, KeyPatch, NewKeyInput},
    proto::v1::{self as pb, key_service_server},
    request::Call,
};

/// The `KeyService` implementation.
#[derive(Clone)]
pub struct KeyService {
    domain: Arc<Domain>,
}

impl KeyService {
    /// Serves the rules in `domain`.
    #[must_use]
    pub fn new(domain: Arc<Domain>) -> Self {
        Self { domain }
    }
}

#[tonic::async_trait]
impl key_service_server::KeyService for KeyService {
    #[tracing::instrument(skip_all)]
    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::CreateApiKeyRequest { name, scopes, environment, expire_time, owner_id } =
            request.into_inner();
        let input = NewKeyInput {
            name,
            scopes,
            environment: convert::environment_from(environment, "environment").map_err(to_status)?,
            expires_at: convert::timestamp_from(expire_time, "expire_time").map_err(to_status)?,
            owner_id: convert::user_or_caller(owner_id),
        };
        let issued = self.domain.create_key(&ctx, &caller, input).await.map_err(to_status)?;
        Ok(Response::new(pb::CreateApiKeyResponse {
            key: issued.key.expose_secret().to_owned(),
            api_key: Some(issued.api_key.into()),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_api_key(
        &self,
        request: Request<pb::GetApiKeyRequest>,
    ) -> Result<Response<pb::GetApiKeyResponse>, Status> {
        let Call { caller, .. } = authenticated(&self.domain, &request).await?;
        let pb::GetApiKeyRequest { key_id } = request.into_inner();
        let key = self.domain.get_key(&caller, KeyId::new(key_id)).await.map_err(to_status)?;
        Ok(Response::new(pb::GetApiKeyResponse { api_key: Some(key.into()) }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let Call { caller, .. } = authenticated(&self.domain, &request).await?;
        let pb::ListApiKeysRequest { owner_id, page_size, page_token } = request.into_inner();
        let page = self
            .domain
            .list_keys(&caller, convert::user_or_caller(owner_id), page_size, &page_token)
            .await
            .map_err(to_status)?;
        Ok(Response::new(pb::ListApiKeysResponse {
            api_keys: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_api_key(
        &self,
        request: Request<pb::UpdateApiKeyRequest>,
    ) -> Result<Response<pb::UpdateApiKeyResponse>, Status> {
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::UpdateApiKeyRequest { api_key, update_mask } = request.into_inner();
        let api_key = api_key.ok_or_else(|| to_status(Error::invalid("api_key", "must be set")))?;
        let paths = update_mask.map(|mask| mask.paths).unwrap_or_default();
        if paths.is_empty() {
            return Err(to_status(Error::invalid("update_mask", "must name at least one field")));
        }
        let mut patch = KeyPatch::default();
        for path in paths {
            match path.as_str() {
                "name" => patch.name = Some(api_key.name.clone()),
                "scopes" => patch.scopes = Some(api_key.scopes.clone()),
                other => {
                    return Err(to_status(Error::invalid(
                        "update_mask",
                        format!("{other:?} cannot be updated; use name or scopes"),
                    )));
                }
            }
        }
        let key =
            self.domain.update_key(&ctx, &caller, KeyId::new(api_key.id), patch).await.map_err(to_status)?;
        Ok(Response::new(pb::UpdateApiKeyResponse { api_key: Some(key.into()) }))
    }

    #[tracing::instrument(skip_all)]
    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::RevokeApiKeyRequest { key_id } = request.into_inner();
        let key = self.domain.revoke_key(&ctx, &caller, KeyId::new(key_id)).await.map_err(to_status)?;
        Ok(Response::new(pb::RevokeApiKeyResponse { api_key: Some(key.into()) }))
    }

    #[tracing::instrument(skip_all)]
    async fn rotate_api_key(
        &self,
        request: Request<pb::RotateApiKeyRequest>,
    ) -> Result<Response<pb::RotateApiKeyResponse>, Status> {
        let Call { ctx, caller } = authenticated(&self.domain, &request).await?;
        let pb::RotateApiKeyRequest { key_id, overlap } = request.into_inner();
        let overlap = convert::duration_from(overlap, "overlap").map_err(to_status)?.unwrap_or_default();
        let (issued, previous) =
            self.domain.rotate_key(&ctx, &caller, KeyId::new(key_id), overlap).await.map_err(to_status)?;
        Ok(Response::new(pb::RotateApiKeyResponse {
            key: issued.key.expose_secret().to_owned(),
            api_key: Some(issued.api_key.into()),
            previous: Some(previous.into()),
        }))
    }
}
