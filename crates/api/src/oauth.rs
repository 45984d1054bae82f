//! `POST /oauth/token`: OAuth 2.0 client credentials (RFC 6749 §4.4), as taxid-api.md §1.4
//! has the SDK use it: HTTP Basic with the client id and secret, a form body
//! `grant_type=client_credentials`, and 200 with `access_token` and `expires_in`. The token
//! then acts as the client's branch key until it expires or the client is revoked. Failures
//! answer RFC 6749's `error` and `error_description` (which the SDK reads) beside our own
//! `code` and `message`, and count toward the authentication throttle like a wrong key.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::AppState;
use crate::schema::ErrorBody;

// The schema of the answer, for the OpenAPI document only.
#[allow(dead_code)]
mod described {
    /// An access token for the client's branch.
    #[derive(utoipa::ToSchema)]
    pub(crate) struct TokenAnswer {
        access_token: String,
        /// Always `Bearer`.
        token_type: String,
        /// Seconds the token lives.
        expires_in: u64,
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        axum::Json(json!({
            "error": error,
            "error_description": description,
            "code": error.to_uppercase(),
            "message": description,
        })),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"ushuru\""),
        );
    }
    response
}

/// The client id and secret of an `Authorization: Basic` header.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = data_encoding::BASE64
        .decode(encoded.trim().as_bytes())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    // RFC 6749 §2.3.1: both form-urlencoded before the Basic encoding.
    let decode = |part: &str| form_urlencoded_decode(part);
    Some((decode(id)?, decode(secret)?))
}

/// `application/x-www-form-urlencoded` decoding of one component.
fn form_urlencoded_decode(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut input = text.bytes();
    while let Some(byte) = input.next() {
        match byte {
            b'+' => bytes.push(b' '),
            b'%' => {
                let high = char::from(input.next()?).to_digit(16)?;
                let low = char::from(input.next()?).to_digit(16)?;
                bytes.push(u8::try_from(high * 16 + low).ok()?);
            }
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).ok()
}

/// The `grant_type` of a form body, if it has exactly one.
fn grant_type(body: &[u8]) -> Result<String, &'static str> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8")?;
    let mut found = None;
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_urlencoded_decode(name).as_deref() == Some("grant_type") {
            if found.is_some() {
                return Err("grant_type is given more than once");
            }
            found = Some(form_urlencoded_decode(value).ok_or("grant_type does not decode")?);
        }
    }
    found.ok_or("grant_type is missing")
}

/// `POST /oauth/token`: an access token for an OAuth client's branch.
#[utoipa::path(
    post,
    path = "/oauth/token",
    tag = "auth",
    summary = "Get an access token (OAuth 2.0 client credentials)",
    description = "HTTP Basic with the client id and secret (issued by \
        `POST /v2/admin/tenants/{deviceId}/oauth-clients` or `ushuru admin oauth-client issue`) \
        and the form body `grant_type=client_credentials`. The token is sent as \
        `Authorization: Bearer` on the branch routes until `expires_in` passes or the client \
        is revoked. Errors carry RFC 6749's `error` and `error_description`.",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "`grant_type=client_credentials`"),
    responses(
        (status = 200, description = "The token.", body = described::TokenAnswer),
        (status = 400, description = "`invalid_request` (no or several grant_type) or \
            `unsupported_grant_type`.", body = ErrorBody),
        (status = 401, description = "`invalid_client`: no Basic credentials, or not a live \
            client's id and secret.", body = ErrorBody),
        (status = 429, description = "Too many failed authentications (`AUTH_THROTTLED`); \
            retry after `Retry-After` seconds.", body = ErrorBody),
        (status = 500, description = "Internal error (`INTERNAL_ERROR`).", body = ErrorBody),
    ),
)]
pub(crate) async fn token(
    State(state): State<AppState>,
    connect: Option<axum::Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let credentials = basic_credentials(&headers);
    let address = connect.map(|axum::Extension(info)| info.0.ip());
    let now = std::time::Instant::now();
    if let Err(wait) = state.auth_throttle.check(address, now) {
        return crate::error::ApiError::throttled(wait).into_response();
    }
    let client = match &credentials {
        Some((id, secret)) => match state.store.authenticate_oauth_client(id, secret).await {
            Ok(client) => client,
            Err(e) => return crate::error::ApiError::from(e).into_response(),
        },
        None => None,
    };
    let Some(client) = client else {
        let client_id = credentials.as_ref().map(|(id, _)| id.as_str());
        let answer = crate::count_failure(&state, now, address, client_id).await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            return answer.into_response();
        }
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "send a live client's id and secret with HTTP Basic",
        );
    };
    match grant_type(&body) {
        Ok(grant) if grant == "client_credentials" => {}
        Ok(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only grant_type=client_credentials is supported",
            );
        }
        Err(reason) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", reason),
    }
    let ttl = state.oauth_token_ttl;
    match state
        .store
        .issue_oauth_token(&client, ttl, state.clock.now())
        .await
    {
        Ok((token, _)) => {
            let mut response = (
                StatusCode::OK,
                axum::Json(json!({
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": ttl.as_secs(),
                })),
            )
                .into_response();
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
        Err(e) => crate::error::ApiError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn basic_credentials_are_decoded_as_rfc_6749_sends_them() {
        let mut headers = HeaderMap::new();
        let encoded = data_encoding::BASE64.encode(b"ushc_1:s%3Acret+x");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&headers),
            Some(("ushc_1".into(), "s:cret x".into()))
        );
        headers.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(basic_credentials(&headers), None);
        headers.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert_eq!(basic_credentials(&headers), None);
    }

    #[test]
    fn the_grant_type_is_read_from_the_form() {
        assert_eq!(
            grant_type(b"grant_type=client_credentials").unwrap(),
            "client_credentials"
        );
        assert_eq!(
            grant_type(b"scope=x&grant_type=client%5Fcredentials").unwrap(),
            "client_credentials"
        );
        assert_eq!(grant_type(b"").unwrap_err(), "grant_type is missing");
        assert!(grant_type(b"grant_type=a&grant_type=b").is_err());
        assert_eq!(grant_type(b"grant_type=password").unwrap(), "password");
    }
}
