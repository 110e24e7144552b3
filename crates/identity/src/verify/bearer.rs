//! Reading a bearer token from an `Authorization` header (RFC 6750 §2.1).

use axum::http::{HeaderMap, header};

use super::TokenError;

/// Whether `b` may be in RFC 6750's `b64token` before its padding: `A-Z a-z 0-9 - . _ ~ + /`.
/// Written without branches, so that the check of a whole token, which runs on every request,
/// compiles to vector instructions (a byte at a time it was 8 % of the gateway's instructions
/// a request).
const fn is_b64token_byte(b: u8) -> bool {
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    let digit = b.wrapping_sub(b'0') < 10;
    letter
        | digit
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
}

/// The token of an `Authorization` value `Bearer <token>`: the scheme in any case, one or more
/// spaces, exactly one `b64token` (`A-Z a-z 0-9 - . _ ~ + /`, then `=` padding), nothing after.
///
/// Another scheme is [`TokenError::Missing`] (the request carries no bearer token, RFC 6750
/// §3.1); a `Bearer` value that is not exactly one token is [`TokenError::Malformed`].
///
/// ```
/// use flotilla_identity::verify::{bearer, TokenError};
///
/// assert_eq!(bearer(b"bearer abc.def.ghi"), Ok("abc.def.ghi"));
/// assert_eq!(bearer(b"Basic dXNlcjpwYXNz"), Err(TokenError::Missing));
/// assert!(bearer(b"Bearer a b").is_err());
/// ```
pub fn bearer(value: &[u8]) -> Result<&str, TokenError> {
    const SCHEME: &[u8] = b"bearer";
    let is_bearer = value.len() > SCHEME.len()
        && value[..SCHEME.len()].eq_ignore_ascii_case(SCHEME)
        && value[SCHEME.len()] == b' ';
    if !is_bearer {
        if value.eq_ignore_ascii_case(SCHEME) {
            return Err(TokenError::Malformed("authorization header"));
        }
        return Err(TokenError::Missing);
    }
    let token = value[SCHEME.len()..].trim_ascii();
    // The padding is the `=` at the end; no other byte may be one.
    let padding = token.iter().rev().take_while(|&&b| b == b'=').count();
    let body = &token[..token.len() - padding];
    let well_formed = !body.is_empty() && body.iter().fold(true, |ok, &b| ok & is_b64token_byte(b));
    if !well_formed {
        return Err(TokenError::Malformed("authorization header"));
    }
    std::str::from_utf8(token).map_err(|_| TokenError::Malformed("authorization header"))
}

/// The bearer token of a request's headers: [`TokenError::Missing`] without an `Authorization`
/// header, [`TokenError::Malformed`] with more than one.
pub fn bearer_from_headers(headers: &HeaderMap) -> Result<&str, TokenError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(TokenError::Missing)?;
    if values.next().is_some() {
        return Err(TokenError::Malformed("authorization header"));
    }
    bearer(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn one_token_after_the_scheme_in_any_case() {
        assert_eq!(bearer(b"Bearer a.b.c"), Ok("a.b.c"));
        assert_eq!(bearer(b"BEARER   a.b.c"), Ok("a.b.c"));
        assert_eq!(bearer(b"Bearer mF_9.B5f-4.1JqM=="), Ok("mF_9.B5f-4.1JqM=="));
        assert_eq!(
            bearer(b"Bearer"),
            Err(TokenError::Malformed("authorization header"))
        );
        assert_eq!(
            bearer(b"Bearer "),
            Err(TokenError::Malformed("authorization header"))
        );
        assert!(bearer(b"Bearer a.b.c d").is_err(), "two tokens");
        assert!(bearer(b"Bearer a=b").is_err(), "padding inside");
        assert!(bearer(b"Bearer =ab").is_err(), "padding first");
        assert!(bearer(b"Bearer ==").is_err(), "padding alone");
        assert!(bearer(b"Bearer a\"b").is_err());
        assert_eq!(bearer(b"Bearerx a"), Err(TokenError::Missing));
        assert_eq!(bearer(b"Basic abc"), Err(TokenError::Missing));
        assert_eq!(bearer(b""), Err(TokenError::Missing));
    }

    #[test]
    fn the_table_admits_exactly_the_b64token_bytes() {
        for b in 0..=u8::MAX {
            let b64token = b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
            assert_eq!(is_b64token_byte(b), b64token, "byte {b}");
            let value = [b"Bearer ab".as_slice(), &[b], b"cd"].concat();
            assert_eq!(bearer(&value).is_ok(), b64token, "byte {b}");
        }
    }

    #[test]
    fn exactly_one_authorization_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_from_headers(&headers), Err(TokenError::Missing));
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer a.b.c"),
        );
        assert_eq!(bearer_from_headers(&headers), Ok("a.b.c"));
        headers.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer d.e.f"),
        );
        assert!(bearer_from_headers(&headers).is_err());
    }
}
