//! The signing keys' tests: loading, callback tokens, outbound JWTs and HMAC signatures.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use pacer_domain::TaskId;
use ring::hmac;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::callback::callback_secret;
use super::hmac::{from_hex, to_hex};
use super::*;

// Test-only keys, generated with openssl for this module. The two RSA constants are one key
// in its two encodings; `RSA_PUBLIC_PEM` is its public half.
const RSA_PKCS1_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEA3DZbBmFZCj9b+Gj1AVGO4+DMRvDquRCcz8/ksnS67mBfQF8g
+RZYEC4culZUCrwXQ/K3SUdy+vzT1Te14FJzf7TF79WfdTx9ei2dszegTIvNCIWC
MCvPnhcu9vg1I/5NnMpnbC8Vbc14M9KEfwdchBxhxmD9XwfXvQa/YYgfSP8UnoAn
tyVZM7XNisO2VoL8072aP1iNaJRRqMScOHZGg5V/kD2uX1xBlas/wHc4LXCTIhV8
rnqPHy2NI9alXywfkFz63kUhiDvxuh7TNXWr0xFVJJAgVgdTiFtYuxXTh4Y89VUF
uVK2cqyaCvmPhJqHIgG8SatXUsvqE1Qvg6/v4QIDAQABAoIBAAOBUqdCLcEl1ghu
X0FTSNjOugxXsbIawMGRYmdcHUzwYsPAX+LRx2VmiSrcIeqpKMj6QuRF4LTRs8DS
lLC1Oe+/8wtIwAjahXgdjsOMsJ6soP8Fj6zFncCQnOeYdtFpBFeTudwKedGtchWH
wHfR0wKqqFHDNx/n8jf+NKtQQoiOY0wpdVUuitT2Q3nHkpigdbSA6RFmQSDmfBaa
kq2fjoGiTu0p96Yo7yKnoKhdc1Vw6tBDaLa8qaR5Wa9pMcvWOv4UaPs3l3EUme4m
r5YnSlsjeq8cf8W7v9zViqiAW7uxd9vKJpN9u6oPD/1cjn2xUVzzS1DFqnADW2sI
z4fe0isCgYEA+Fjwtkaq0QiLyViXwzAFV1wacCY2opQRHLtCQgW3LsIz0Bps8YcK
9lpTDQ5DVP8QpuHtOxSnh/jA1iGR/PQIoavqgolgHPWC5LZvK1d1/8rWCJFhNX3h
yNHV+i7YL24X5R9hm2WLzJbwniyaY5AfE6kK6xjOKk+fkGEesJRyAJsCgYEA4v95
j/VGN05bRtAzoPjU2Q14fK7qPnnOlxwOVBjB7I7VF+2ugilc9cSA0WTp+KPSbKLB
jyeJOySLg+ZxrhiX+qV7vVdpnwOuX32qZykAKRWQnxdUqB5T2/aDh9jtIYfGEDIO
z6U3jtKZPzXjheBS8f7ga36UpcpUiDownNRoAzMCgYBVtJP1w7OFihZ7uPg+4x6k
xGNXWsi2GLVDHhjCoihSmbC527THMZyF4iwRMF/qQFAl14hAQGOEmEMsYs935Vvp
N2QqAnDJ7axrc84vvfI6AW0V7d4HUNcPr+LRgUMYMz1J1CeiMkwpodmOLMRnIcCn
z0m2Uowrq+jcMbgepkwliwKBgDfcpw3GToFNxyimFA6JLdg8eGo2oW6+ixikzuHj
NdYBUG+TDl75zuasdQcSzoFhz2bsprWUBTGIzMyo6VDuvHfyQYFXAacgQMk/I7A/
Zsq1g+Gi3DKDRB/dioDj4Xde8l8J8psnDYUYTp4/pL5NdhwXnSLXA73JDQR5TX1K
yE4BAoGBAJOMN5YKAlGX+xDAp4Tdu83OMDNwOkyt4zKPa3Uhd5QgVYs1IQRQpVHz
bI3K2PKXG5Nmj5XHRDRIiwuGL8qTtwLohoFHVxpHEVtAQoVQpgZAkA+yoI/mosPI
ULov6OdpIWfKyFzLr6Dkw9QYK9xUWhTul9XRG42iDSgJv6N31HkB
-----END RSA PRIVATE KEY-----
";
const RSA_PKCS8_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDcNlsGYVkKP1v4
aPUBUY7j4MxG8Oq5EJzPz+SydLruYF9AXyD5FlgQLhy6VlQKvBdD8rdJR3L6/NPV
N7XgUnN/tMXv1Z91PH16LZ2zN6BMi80IhYIwK8+eFy72+DUj/k2cymdsLxVtzXgz
0oR/B1yEHGHGYP1fB9e9Br9hiB9I/xSegCe3JVkztc2Kw7ZWgvzTvZo/WI1olFGo
xJw4dkaDlX+QPa5fXEGVqz/AdzgtcJMiFXyueo8fLY0j1qVfLB+QXPreRSGIO/G6
HtM1davTEVUkkCBWB1OIW1i7FdOHhjz1VQW5UrZyrJoK+Y+EmociAbxJq1dSy+oT
VC+Dr+/hAgMBAAECggEAA4FSp0ItwSXWCG5fQVNI2M66DFexshrAwZFiZ1wdTPBi
w8Bf4tHHZWaJKtwh6qkoyPpC5EXgtNGzwNKUsLU577/zC0jACNqFeB2Ow4ywnqyg
/wWPrMWdwJCc55h20WkEV5O53Ap50a1yFYfAd9HTAqqoUcM3H+fyN/40q1BCiI5j
TCl1VS6K1PZDeceSmKB1tIDpEWZBIOZ8FpqSrZ+OgaJO7Sn3pijvIqegqF1zVXDq
0ENotryppHlZr2kxy9Y6/hRo+zeXcRSZ7iavlidKWyN6rxx/xbu/3NWKqIBbu7F3
28omk327qg8P/VyOfbFRXPNLUMWqcANbawjPh97SKwKBgQD4WPC2RqrRCIvJWJfD
MAVXXBpwJjailBEcu0JCBbcuwjPQGmzxhwr2WlMNDkNU/xCm4e07FKeH+MDWIZH8
9Aihq+qCiWAc9YLktm8rV3X/ytYIkWE1feHI0dX6LtgvbhflH2GbZYvMlvCeLJpj
kB8TqQrrGM4qT5+QYR6wlHIAmwKBgQDi/3mP9UY3TltG0DOg+NTZDXh8ruo+ec6X
HA5UGMHsjtUX7a6CKVz1xIDRZOn4o9JsosGPJ4k7JIuD5nGuGJf6pXu9V2mfA65f
fapnKQApFZCfF1SoHlPb9oOH2O0hh8YQMg7PpTeO0pk/NeOF4FLx/uBrfpSlylSI
OjCc1GgDMwKBgFW0k/XDs4WKFnu4+D7jHqTEY1dayLYYtUMeGMKiKFKZsLnbtMcx
nIXiLBEwX+pAUCXXiEBAY4SYQyxiz3flW+k3ZCoCcMntrGtzzi+98joBbRXt3gdQ
1w+v4tGBQxgzPUnUJ6IyTCmh2Y4sxGchwKfPSbZSjCur6NwxuB6mTCWLAoGAN9yn
DcZOgU3HKKYUDokt2Dx4ajahbr6LGKTO4eM11gFQb5MOXvnO5qx1BxLOgWHPZuym
tZQFMYjMzKjpUO68d/JBgVcBpyBAyT8jsD9myrWD4aLcMoNEH92KgOPhd17yXwny
mycNhRhOnj+kvk12HBedItcDvckNBHlNfUrITgECgYEAk4w3lgoCUZf7EMCnhN27
zc4wM3A6TK3jMo9rdSF3lCBVizUhBFClUfNsjcrY8pcbk2aPlcdENEiLC4YvypO3
AuiGgUdXGkcRW0BChVCmBkCQD7Kgj+aiw8hQui/o52khZ8rIXMuvoOTD1Bgr3FRa
FO6X1dEbjaINKAm/o3fUeQE=
-----END PRIVATE KEY-----
";
const RSA_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA3DZbBmFZCj9b+Gj1AVGO
4+DMRvDquRCcz8/ksnS67mBfQF8g+RZYEC4culZUCrwXQ/K3SUdy+vzT1Te14FJz
f7TF79WfdTx9ei2dszegTIvNCIWCMCvPnhcu9vg1I/5NnMpnbC8Vbc14M9KEfwdc
hBxhxmD9XwfXvQa/YYgfSP8UnoAntyVZM7XNisO2VoL8072aP1iNaJRRqMScOHZG
g5V/kD2uX1xBlas/wHc4LXCTIhV8rnqPHy2NI9alXywfkFz63kUhiDvxuh7TNXWr
0xFVJJAgVgdTiFtYuxXTh4Y89VUFuVK2cqyaCvmPhJqHIgG8SatXUsvqE1Qvg6/v
4QIDAQAB
-----END PUBLIC KEY-----
";
/// `openssl genpkey -algorithm ed25519`: PKCS#8 v1, unlike ring's v2.
const ED25519_V1_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIHJn3eaYJMwKeuECcjAy6Tn7mHwpOlP60GFcb1wZIiYW
-----END PRIVATE KEY-----
";
const RSA_1024_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIICXAIBAAKBgQDLC+3rgDj6FZXxuW7ED90ydzAQcq12Xv6XNP25/rl8/4xaTVGo
Qb56CRu3W50orm3XMt8e44y8OqiMXtr9cl4l/+f4bnpvnbbqlVUJ1hOryE9dS7VY
wP+zf3aMV5jVG2CSoXJWRDowMWTZ6GiQ8LWCVugbY2eUx7g0GwuoQ6TPsQIDAQAB
AoGAcpJEqgIsJFFRzpgHvHIHKpa+dEmBP63SkpfAI9dr6vB3zeybCwot5MaG8Sus
vmvOZwO5isBzhTLEMJDFmQWTwXLZRDjZeL5Gw8d4T6v25AAWr2ZJmpW8t1flzxkV
QMckLPlhup2mVamdvTjT7GMdYUj6OMSPfDKXR8D+xx3XxJECQQD7vdQSJg5pEB6p
Fi56BEQQEJ+T6J0U/tvhZqsPBizC2pK6flA6uiad3KPI5XY804s7/0i/s3z1T1og
J0cmSiT7AkEAzns6Bx0gN6xZITB9yoAbN6/ACYkbQ7mkYq9wwaJKOPopO8dUteVA
YF0pFzmFmF+meziPTeNwVaOfW2d3UXnGQwJBAJPMXo8NMtayNR4WvNC8Ym2AJQCE
yHzEKLoMOhAHEw6PnyfI8zeXhQaXvL09Iw8RMCTYe5C5Q3sOzJ4mEVrEmzMCQG7z
qGrKK9W+tuYuuGloDTgPKJH3Kr9psfuVanGiU1/qjN2ibtKPLdiaNspUDoWiYEM2
UUr5PBPIqIjlQCh31yECQA3piwMpupJLu4fcwEPoyfrAZT5PgL6LaLY9ed/QMHV4
VF00glaLr+iqvfrWEuSBTlXYZNvZSH0SyEC84C29V7I=
-----END RSA PRIVATE KEY-----
";
const EC_P256_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg4YicWU8MwDohLRby
PBGwtWqOvtXK1qlweM7RW6BhRX2hRANCAAQ58AVUbMRP2f574KXUyPNmXHurJ95C
29WFq9QEPrln8/ffyZHsH9OD5KmbsTGgjG4rDCoD47W8uq1bysR6sSgf
-----END PRIVATE KEY-----
";

const LEEWAY: Duration = Duration::from_secs(60);

fn keyset(issuer: &str, keys: &[(&str, &str)]) -> Result<Keyset, KeyError> {
    let keys: Vec<(String, SecretString)> = keys
        .iter()
        .map(|(kid, pem)| ((*kid).to_owned(), SecretString::from(*pem)))
        .collect();
    Keyset::from_pems(issuer, &keys)
}

fn in_an_hour() -> DateTime<Utc> {
    Utc::now() + chrono::Duration::hours(1)
}

fn header_of(token: &str) -> Header {
    jsonwebtoken::decode_header(token).expect("a header")
}

fn published_key<'a>(jwks: &'a Value, kid: &str) -> &'a serde_json::Map<String, Value> {
    jwks["keys"]
        .as_array()
        .expect("a key array")
        .iter()
        .find(|key| key["kid"] == kid)
        .and_then(Value::as_object)
        .expect("the kid is published")
}

/// A token assembled by hand: `sign` gets the signing input `header.payload`.
fn forge(header: &Value, claims: &Value, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let encode = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
    let input = format!("{}.{}", encode(header), encode(claims));
    let signature = URL_SAFE_NO_PAD.encode(sign(input.as_bytes()));
    format!("{input}.{signature}")
}

/// A token in the form Pacer mints, with the given claims, keyed by the callback secret of
/// the key `kid` of `keys`.
fn maced(keys: &Keyset, kid: &str, claims: &Value) -> String {
    keys.inner
        .keys
        .iter()
        .find(|key| key.kid == kid)
        .expect("the kid is loaded")
        .mac(claims)
        .expect("signing")
}

/// A correctly signed token with the given claims, made with `pem` under `kid`.
fn signed(kid: &str, algorithm: Algorithm, pem: &str, claims: &Value) -> String {
    let key = match algorithm {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .expect("a test key");
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).expect("signing")
}

#[test]
fn callback_tokens_round_trip_as_hs256_and_the_jwks_verifies_outbound_tokens() {
    let cases = [
        (Keyset::generate("pacer"), Algorithm::EdDSA),
        (
            keyset("pacer", &[("ed", ED25519_V1_PEM)]).expect("loads"),
            Algorithm::EdDSA,
        ),
        (
            keyset("pacer", &[("rsa1", RSA_PKCS1_PEM)]).expect("loads"),
            Algorithm::RS256,
        ),
        (
            keyset("pacer", &[("rsa8", RSA_PKCS8_PEM)]).expect("loads"),
            Algorithm::RS256,
        ),
    ];
    for (keys, algorithm) in cases {
        let task = TaskId::new();
        let expires = in_an_hour();
        let token = keys.mint_callback_token(task, expires).expect("minted");
        let header = header_of(&token);
        assert_eq!(header.alg, Algorithm::HS256, "{keys:?}");
        assert_eq!(
            header.kid.as_deref(),
            keys.jwks()["keys"][0]["kid"].as_str(),
            "the active key's kid"
        );
        assert_eq!(
            keys.verify_callback_token(&token, LEEWAY),
            Ok(task),
            "{keys:?}"
        );
        let claims =
            jsonwebtoken::dangerous::insecure_decode_claims::<Value>(&token).expect("claims");
        let iat = claims["iat"].as_i64().expect("iat");
        assert!((iat - Utc::now().timestamp()).abs() <= 5);
        assert_eq!(
            claims,
            json!({
                "iss": "pacer", "aud": CALLBACK_AUDIENCE, "sub": task.to_string(),
                "iat": iat, "exp": expires.timestamp(),
            })
        );

        let token = keys
            .sign_outbound(
                "https://downstream.example",
                "the-subject",
                Duration::from_secs(300),
            )
            .expect("signed");
        let header = header_of(&token);
        assert_eq!(header.alg, algorithm);
        let kid = header.kid.expect("a kid");
        let jwks: JwkSet = serde_json::from_value(keys.jwks()).expect("a JWKS");
        let jwk = jwks.find(&kid).expect("the signing key is published");
        let mut validation = Validation::new(algorithm);
        validation.set_audience(&["https://downstream.example"]);
        validation.set_issuer(&["pacer"]);
        let claims = jsonwebtoken::decode::<Value>(
            &token,
            &DecodingKey::from_jwk(jwk).expect("a decoding key"),
            &validation,
        )
        .expect("the published key verifies the token")
        .claims;
        assert_eq!(claims["sub"], "the-subject");
        let iat = claims["iat"].as_i64().expect("iat");
        assert!((iat - Utc::now().timestamp()).abs() <= 5);
        assert_eq!(claims["nbf"], iat);
        assert_eq!(claims["exp"], iat + 300);
        let jti = claims["jti"].as_str().expect("jti");
        assert!(jti.parse::<uuid::Uuid>().is_ok());

        let again = keys
            .sign_outbound(
                "https://downstream.example",
                "the-subject",
                Duration::from_secs(300),
            )
            .expect("signed");
        let again =
            jsonwebtoken::dangerous::insecure_decode_claims::<Value>(&again).expect("claims");
        assert_ne!(again["jti"], jti, "every dispatch token has its own jti");
    }
}

#[test]
fn keys_are_detected_and_published_with_their_algorithm() {
    let keys = keyset(
        "pacer",
        &[
            ("ed", ED25519_V1_PEM),
            ("rsa1", RSA_PKCS1_PEM),
            ("rsa8", RSA_PKCS8_PEM),
        ],
    )
    .expect("loads");
    let jwks = keys.jwks();
    let ed = published_key(&jwks, "ed");
    assert_eq!(
        (&ed["kty"], &ed["crv"], &ed["alg"]),
        (&json!("OKP"), &json!("Ed25519"), &json!("EdDSA"))
    );
    let x = URL_SAFE_NO_PAD
        .decode(ed["x"].as_str().expect("x"))
        .expect("base64url");
    assert_eq!(x.len(), 32);

    let (pkcs1, pkcs8) = (published_key(&jwks, "rsa1"), published_key(&jwks, "rsa8"));
    assert_eq!(
        (&pkcs1["kty"], &pkcs1["alg"]),
        (&json!("RSA"), &json!("RS256"))
    );
    assert_eq!(
        (&pkcs1["n"], &pkcs1["e"]),
        (&pkcs8["n"], &pkcs8["e"]),
        "one key, two encodings"
    );
    assert_eq!(pkcs1["e"], "AQAB");

    for key in jwks["keys"].as_array().expect("keys") {
        assert_eq!(key["use"], "sig");
        for private in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
            assert!(key.get(private).is_none(), "{private} is published: {key}");
        }
    }

    let generated = generate_ed25519_pem();
    assert!(generated.starts_with("-----BEGIN PRIVATE KEY-----\n"));
    assert!(generated.trim_end().ends_with("-----END PRIVATE KEY-----"));
    assert!(!generated.contains('\r'));
    assert_ne!(generated, generate_ed25519_pem());
    let dev = Keyset::generate("pacer");
    let kid = dev.jwks()["keys"][0]["kid"]
        .as_str()
        .expect("a kid")
        .to_owned();
    let hex = kid.strip_prefix("dev-").expect("a dev- kid");
    assert!(
        hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{kid}"
    );
    assert_eq!(dev.issuer(), "pacer");
}

#[test]
fn a_rotated_keyset_verifies_old_tokens_and_publishes_both_keys() {
    let old_pem = generate_ed25519_pem();
    let new_pem = generate_ed25519_pem();
    let old = keyset("pacer", &[("old", &old_pem)]).expect("loads");
    let rotated = keyset("pacer", &[("new", &new_pem), ("old", &old_pem)]).expect("loads");
    let task = TaskId::new();

    let from_old = old.mint_callback_token(task, in_an_hour()).expect("minted");
    assert_eq!(rotated.verify_callback_token(&from_old, LEEWAY), Ok(task));

    let from_rotated = rotated
        .mint_callback_token(task, in_an_hour())
        .expect("minted");
    assert_eq!(
        header_of(&from_rotated).kid.as_deref(),
        Some("new"),
        "the first key signs"
    );
    assert_eq!(
        rotated.verify_callback_token(&from_rotated, LEEWAY),
        Ok(task)
    );
    assert_eq!(
        old.verify_callback_token(&from_rotated, LEEWAY),
        Err(KeyError::UnknownKey)
    );
    // A node that lists the same keys the other way round (mid-rotation) verifies with the
    // second key's secret, and the other way about.
    let reordered = keyset("pacer", &[("old", &old_pem), ("new", &new_pem)]).expect("loads");
    assert_eq!(
        reordered.verify_callback_token(&from_rotated, LEEWAY),
        Ok(task)
    );
    let from_reordered = reordered
        .mint_callback_token(task, in_an_hour())
        .expect("minted");
    assert_eq!(header_of(&from_reordered).kid.as_deref(), Some("old"));
    assert_eq!(
        rotated.verify_callback_token(&from_reordered, LEEWAY),
        Ok(task)
    );

    let jwks = rotated.jwks();
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|key| key["kid"].as_str().expect("a kid"))
        .collect();
    assert_eq!(kids, ["new", "old"]);

    // The same kid on another key (say, a second deployment) is a bad signature, not a pass.
    let impostor = keyset("pacer", &[("old", &new_pem)]).expect("loads");
    let forged = impostor
        .mint_callback_token(task, in_an_hour())
        .expect("minted");
    assert_eq!(
        old.verify_callback_token(&forged, LEEWAY),
        Err(KeyError::BadSignature)
    );
}

#[test]
fn a_callback_token_is_a_mac_under_the_active_kid_that_only_its_key_verifies() {
    let keys = keyset("pacer", &[("ed", ED25519_V1_PEM), ("rsa", RSA_PKCS1_PEM)]).expect("loads");
    let task = TaskId::new();
    let token = keys
        .mint_callback_token(task, in_an_hour())
        .expect("minted");
    let header = header_of(&token);
    assert_eq!(
        (header.alg, header.kid.as_deref()),
        (Algorithm::HS256, Some("ed"))
    );
    assert_eq!(keys.verify_callback_token(&token, LEEWAY), Ok(task));

    // One bit of the MAC changed.
    let (input, signature) = token.rsplit_once('.').expect("three parts");
    let mut signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
    assert_eq!(signature.len(), 32);
    signature[17] ^= 0x01;
    let flipped = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&signature));
    assert_eq!(
        keys.verify_callback_token(&flipped, LEEWAY),
        Err(KeyError::BadSignature)
    );

    // Another key under the same kid (say, a second deployment): neither verifies the other's.
    let impostor = keyset("pacer", &[("ed", &generate_ed25519_pem())]).expect("loads");
    let forged = impostor
        .mint_callback_token(task, in_an_hour())
        .expect("minted");
    assert_eq!(header_of(&forged).kid.as_deref(), Some("ed"));
    assert_eq!(
        keys.verify_callback_token(&forged, LEEWAY),
        Err(KeyError::BadSignature)
    );
    assert_eq!(
        impostor.verify_callback_token(&token, LEEWAY),
        Err(KeyError::BadSignature)
    );

    // The asymmetric form earlier versions minted, with each key, still verifies.
    let now = Utc::now().timestamp();
    let claims = json!({
        "iss": "pacer", "aud": CALLBACK_AUDIENCE, "sub": task.to_string(),
        "iat": now, "exp": now + 3600,
    });
    let old_ed = signed("ed", Algorithm::EdDSA, ED25519_V1_PEM, &claims);
    let old_rsa = signed("rsa", Algorithm::RS256, RSA_PKCS1_PEM, &claims);
    assert_eq!(keys.verify_callback_token(&old_ed, LEEWAY), Ok(task));
    assert_eq!(keys.verify_callback_token(&old_rsa, LEEWAY), Ok(task));
    assert_eq!(
        impostor.verify_callback_token(&old_ed, LEEWAY),
        Err(KeyError::BadSignature)
    );
    let mut expired = claims.clone();
    expired["exp"] = json!(now - 3600);
    assert_eq!(
        keys.verify_callback_token(
            &signed("ed", Algorithm::EdDSA, ED25519_V1_PEM, &expired),
            LEEWAY
        ),
        Err(KeyError::Expired)
    );
    // The old form is the key's own algorithm only.
    assert_eq!(
        keys.verify_callback_token(
            &signed("ed", Algorithm::RS256, RSA_PKCS1_PEM, &claims),
            LEEWAY
        ),
        Err(KeyError::WrongAlgorithm)
    );

    // An RSA key's callback tokens are MACs as well.
    let rsa_first =
        keyset("pacer", &[("rsa", RSA_PKCS8_PEM), ("ed", ED25519_V1_PEM)]).expect("loads");
    let token = rsa_first
        .mint_callback_token(task, in_an_hour())
        .expect("minted");
    let header = header_of(&token);
    assert_eq!(
        (header.alg, header.kid.as_deref()),
        (Algorithm::HS256, Some("rsa"))
    );
    assert_eq!(rsa_first.verify_callback_token(&token, LEEWAY), Ok(task));
    assert_eq!(keys.verify_callback_token(&token, LEEWAY), Ok(task));
}

#[test]
fn every_encoding_of_a_key_derives_the_same_callback_secret() {
    // Known answers, computed with Python's `cryptography`:
    // hmac.new(LABEL, key.sign(MESSAGE[, PKCS1v15(), SHA256()]), sha256).hexdigest()
    const ED25519_SECRET: &str = "1d1c04201fca3c34881c40c7d955a1ce5e35ae1c70d9344f1d032f563deb715b";
    const RSA_SECRET: &str = "f2639bfa75210b46ace8669f54b7b78d7cb8ead19eae3e123d87837c7d67c7eb";
    let ed = EncodingKey::from_ed_pem(ED25519_V1_PEM.as_bytes()).expect("a key");
    let rsa = EncodingKey::from_rsa_pem(RSA_PKCS1_PEM.as_bytes()).expect("a key");
    assert_eq!(
        callback_secret(&ed, Algorithm::EdDSA).map(|tag| to_hex(tag.as_ref())),
        Ok(ED25519_SECRET.to_owned())
    );
    assert_eq!(
        callback_secret(&rsa, Algorithm::RS256).map(|tag| to_hex(tag.as_ref())),
        Ok(RSA_SECRET.to_owned())
    );
    let crlf = |pem: &str| pem.replace('\n', "\r\n");
    let loaded = keyset("pacer", &[("ed", &crlf(ED25519_V1_PEM))]).expect("loads");
    let task = TaskId::new();
    let now = Utc::now().timestamp();
    let claims = json!({
        "iss": "pacer", "aud": CALLBACK_AUDIENCE, "sub": task.to_string(),
        "iat": now, "exp": now + 600,
    });
    let secret = from_hex(ED25519_SECRET).expect("hex");
    let known = forge(
        &json!({"alg": "HS256", "typ": "JWT", "kid": "ed"}),
        &claims,
        |input| {
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &secret), input)
                .as_ref()
                .to_vec()
        },
    );
    assert_eq!(loaded.verify_callback_token(&known, LEEWAY), Ok(task));

    // One generated key as ring writes it (PKCS#8 v2, with the public key) and as openssl
    // does (v1: the same prefix as `ED25519_V1_PEM` and the same 32-byte seed), each with LF
    // and CRLF line endings.
    let v2 = generate_ed25519_pem();
    let v2_der = pem::parse(&v2).expect("a PEM").into_contents();
    let v1_der = pem::parse(ED25519_V1_PEM).expect("a PEM").into_contents();
    assert_eq!((v2_der.len(), v1_der.len()), (83, 48));
    let v1_der = [&v1_der[..16], &v2_der[16..48]].concat();
    let v1 = pem::encode_config(
        &pem::Pem::new("PRIVATE KEY", v1_der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    );
    let ed_encodings = [v2.clone(), crlf(&v2), v1.clone(), crlf(&v1)];
    let rsa_encodings = [
        RSA_PKCS1_PEM.to_owned(),
        RSA_PKCS8_PEM.to_owned(),
        crlf(RSA_PKCS1_PEM),
        crlf(RSA_PKCS8_PEM),
    ];
    for encodings in [&ed_encodings, &rsa_encodings] {
        let keysets: Vec<Keyset> = encodings
            .iter()
            .map(|pem| keyset("pacer", &[("k", pem)]).expect("loads"))
            .collect();
        let jwk = &keysets[0].jwks()["keys"][0];
        for (i, minting) in keysets.iter().enumerate() {
            assert_eq!(&minting.jwks()["keys"][0], jwk, "one key, encoding {i}");
            let token = minting
                .mint_callback_token(task, in_an_hour())
                .expect("minted");
            for (j, verifying) in keysets.iter().enumerate() {
                assert_eq!(
                    verifying.verify_callback_token(&token, LEEWAY),
                    Ok(task),
                    "minted with encoding {i}, verified with encoding {j}"
                );
            }
        }
    }
}

#[test]
fn forged_expired_and_misdirected_callback_tokens_are_refused() {
    let ed = keyset("pacer", &[("ed", ED25519_V1_PEM)]).expect("loads");
    let rsa = keyset("pacer", &[("rsa", RSA_PKCS8_PEM)]).expect("loads");
    let task = TaskId::new();
    let now = Utc::now().timestamp();
    let claims = json!({
        "iss": "pacer", "aud": CALLBACK_AUDIENCE, "sub": task.to_string(),
        "iat": now, "exp": now + 600,
    });
    assert_eq!(
        ed.verify_callback_token(
            &signed("ed", Algorithm::EdDSA, ED25519_V1_PEM, &claims),
            LEEWAY
        ),
        Ok(task)
    );

    // Expired: past the leeway is refused, within it is not.
    let expired = ed
        .mint_callback_token(task, Utc::now() - chrono::Duration::minutes(2))
        .expect("minted");
    assert_eq!(
        ed.verify_callback_token(&expired, LEEWAY),
        Err(KeyError::Expired)
    );
    let just = ed
        .mint_callback_token(task, Utc::now() - chrono::Duration::seconds(10))
        .expect("minted");
    assert_eq!(ed.verify_callback_token(&just, LEEWAY), Ok(task));

    // A `crit` header naming any extension is refused, though the MAC is right.
    let secret = callback_secret(
        &EncodingKey::from_ed_pem(ED25519_V1_PEM.as_bytes()).expect("a key"),
        Algorithm::EdDSA,
    )
    .expect("a secret");
    let critical = forge(
        &json!({ "alg": "HS256", "typ": "JWT", "kid": "ed", "crit": ["x-pacer-unknown"] }),
        &claims,
        |input| {
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_ref()), input)
                .as_ref()
                .to_vec()
        },
    );
    assert_eq!(
        ed.verify_callback_token(&critical, LEEWAY),
        Err(KeyError::Critical)
    );
    let plain = forge(
        &json!({ "alg": "HS256", "typ": "JWT", "kid": "ed" }),
        &claims,
        |input| {
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret.as_ref()), input)
                .as_ref()
                .to_vec()
        },
    );
    assert_eq!(ed.verify_callback_token(&plain, LEEWAY), Ok(task));

    // A dispatch token is not a callback token.
    let outbound = ed
        .sign_outbound(
            "https://downstream.example",
            &task.to_string(),
            Duration::from_secs(300),
        )
        .expect("signed");
    assert_eq!(
        ed.verify_callback_token(&outbound, LEEWAY),
        Err(KeyError::Claims("wrong audience"))
    );

    // Another issuer's token, though signed by the same key.
    let elsewhere = keyset("elsewhere", &[("ed", ED25519_V1_PEM)]).expect("loads");
    let foreign = elsewhere
        .mint_callback_token(task, in_an_hour())
        .expect("minted");
    assert_eq!(
        ed.verify_callback_token(&foreign, LEEWAY),
        Err(KeyError::Claims("wrong issuer"))
    );

    // A flipped character in the payload.
    let token = ed.mint_callback_token(task, in_an_hour()).expect("minted");
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let middle = parts[1].len() / 2;
    let flipped = if parts[1].as_bytes()[middle] == b'A' {
        "B"
    } else {
        "A"
    };
    parts[1].replace_range(middle..=middle, flipped);
    assert_eq!(
        ed.verify_callback_token(&parts.join("."), LEEWAY),
        Err(KeyError::BadSignature)
    );

    // `alg: none`, with and without a signature.
    let none = json!({"alg": "none", "typ": "JWT", "kid": "ed"});
    let unsigned = forge(&none, &claims, |_| Vec::new());
    assert!(unsigned.ends_with('.'));
    assert_eq!(
        ed.verify_callback_token(&unsigned, LEEWAY),
        Err(KeyError::Malformed)
    );
    assert_eq!(
        ed.verify_callback_token(&format!("{unsigned}AAAA"), LEEWAY),
        Err(KeyError::Malformed)
    );

    // Algorithm confusion: HS256 keyed with what an attacker knows, the public key.
    let hs256 = |kid: &str, secret: &[u8]| {
        forge(
            &json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
            &claims,
            |input| {
                hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input)
                    .as_ref()
                    .to_vec()
            },
        )
    };
    // HS256 is accepted, but only ever keyed by the secret derived from the private key.
    let confused = hs256("rsa", RSA_PUBLIC_PEM.as_bytes());
    assert_eq!(
        rsa.verify_callback_token(&confused, LEEWAY),
        Err(KeyError::BadSignature)
    );
    let n = rsa.jwks()["keys"][0]["n"].as_str().expect("n").to_owned();
    let n = URL_SAFE_NO_PAD.decode(n).expect("base64url");
    assert_eq!(
        rsa.verify_callback_token(&hs256("rsa", &n), LEEWAY),
        Err(KeyError::BadSignature)
    );
    let x = ed.jwks()["keys"][0]["x"].as_str().expect("x").to_owned();
    let x = URL_SAFE_NO_PAD.decode(x).expect("base64url");
    assert_eq!(
        ed.verify_callback_token(&hs256("ed", &x), LEEWAY),
        Err(KeyError::BadSignature)
    );
    let jwk = ed.jwks()["keys"][0].to_string();
    assert_eq!(
        ed.verify_callback_token(&hs256("ed", jwk.as_bytes()), LEEWAY),
        Err(KeyError::BadSignature)
    );
    // Other HMAC algorithms are not the callback algorithm, whatever they are keyed with.
    let hs512 = forge(
        &json!({"alg": "HS512", "typ": "JWT", "kid": "ed"}),
        &claims,
        |input| {
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA512, &x), input)
                .as_ref()
                .to_vec()
        },
    );
    assert_eq!(
        ed.verify_callback_token(&hs512, LEEWAY),
        Err(KeyError::WrongAlgorithm)
    );
    // And a key's token presented under another key's kid and algorithm.
    let both = keyset("pacer", &[("ed", ED25519_V1_PEM), ("rsa", RSA_PKCS8_PEM)]).expect("loads");
    let swapped = signed("rsa", Algorithm::EdDSA, ED25519_V1_PEM, &claims);
    assert_eq!(
        both.verify_callback_token(&swapped, LEEWAY),
        Err(KeyError::WrongAlgorithm)
    );

    // Unknown or missing kid.
    let unknown = signed("someone", Algorithm::EdDSA, ED25519_V1_PEM, &claims);
    assert_eq!(
        ed.verify_callback_token(&unknown, LEEWAY),
        Err(KeyError::UnknownKey)
    );
    let key = EncodingKey::from_ed_pem(ED25519_V1_PEM.as_bytes()).expect("a key");
    let kidless =
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).expect("signed");
    assert_eq!(
        ed.verify_callback_token(&kidless, LEEWAY),
        Err(KeyError::UnknownKey)
    );

    // Signed by the right key, but with claims Pacer never mints: refused alike in both
    // forms.
    let with = |patch: Value| {
        let mut claims = claims.clone();
        for (name, value) in patch.as_object().expect("an object") {
            if value.is_null() {
                claims.as_object_mut().expect("an object").remove(name);
            } else {
                claims[name] = value.clone();
            }
        }
        let signed = ed.verify_callback_token(
            &signed("ed", Algorithm::EdDSA, ED25519_V1_PEM, &claims),
            LEEWAY,
        );
        let maced = ed.verify_callback_token(&maced(&ed, "ed", &claims), LEEWAY);
        assert_eq!(signed, maced, "{claims}");
        maced
    };
    assert_eq!(
        with(json!({"exp": null})),
        Err(KeyError::Claims("a required claim is missing"))
    );
    assert_eq!(
        with(json!({"iat": null})),
        Err(KeyError::Claims("`iat` is missing"))
    );
    assert_eq!(
        with(json!({"iat": now + 3600})),
        Err(KeyError::Claims("`iat` is in the future"))
    );
    assert_eq!(
        with(json!({"nbf": now + 3600})),
        Err(KeyError::Claims("the token is not yet valid (`nbf`)"))
    );
    assert_eq!(
        with(json!({"sub": "not-a-task"})),
        Err(KeyError::Claims("`sub` is not a task id"))
    );
    assert_eq!(
        with(json!({"aud": ["someone", CALLBACK_AUDIENCE]})),
        Ok(task)
    );
    // jsonwebtoken counts an `exp` that is not a number as absent.
    assert_eq!(
        with(json!({"exp": "soon"})),
        Err(KeyError::Claims("a required claim is missing"))
    );
    assert_eq!(
        ed.verify_callback_token("not.a-token", LEEWAY),
        Err(KeyError::Malformed)
    );
    assert_eq!(
        ed.verify_callback_token("", LEEWAY),
        Err(KeyError::Malformed)
    );
}

#[test]
fn unusable_keys_are_refused_without_echoing_key_material() {
    assert_eq!(keyset("pacer", &[]).err(), Some(KeyError::NoKeys));
    assert_eq!(
        keyset("pacer", &[(" ", ED25519_V1_PEM)]).err(),
        Some(KeyError::EmptyKid)
    );
    assert_eq!(
        keyset("pacer", &[("a", ED25519_V1_PEM), ("a", RSA_PKCS1_PEM)]).err(),
        Some(KeyError::DuplicateKid("a".into()))
    );
    let refused = [
        ("public", RSA_PUBLIC_PEM, "not a private key"),
        ("ec", EC_P256_PEM, "neither Ed25519 nor RSA"),
        ("small", RSA_1024_PEM, "1024 bits"),
        (
            "garbage",
            "MC4CAQAwBQYDK2VwBCIEIHJn3eaYJMwKeuECcjAy6Tn7mHwpOlP60GFcb1wZIiYW",
            "not a PEM block",
        ),
    ];
    for (kid, pem, reason) in refused {
        let error = keyset("pacer", &[(kid, pem)]).expect_err(kid);
        let message = error.to_string();
        assert!(
            matches!(&error, KeyError::InvalidKey { kid: k, .. } if k == kid),
            "{error:?}"
        );
        assert!(message.contains(reason), "{kid}: {message}");
        for line in pem.lines().filter(|line| !line.starts_with("-----")) {
            assert!(
                !message.contains(line) && !format!("{error:?}").contains(line),
                "{kid}: {message}"
            );
        }
    }
}

#[test]
fn debug_names_the_keys_without_their_material() {
    let keys = keyset("pacer", &[("ed", ED25519_V1_PEM), ("rsa", RSA_PKCS1_PEM)]).expect("loads");
    let debug = format!("{keys:?}");
    assert!(
        debug.contains("pacer") && debug.contains("ed (EdDSA)") && debug.contains("rsa (RS256)"),
        "{debug}"
    );
    let jwks = keys.jwks();
    let public = [
        published_key(&jwks, "ed")["x"].clone(),
        published_key(&jwks, "rsa")["n"].clone(),
    ];
    for pem in [ED25519_V1_PEM, RSA_PKCS1_PEM] {
        for line in pem.lines().filter(|line| !line.starts_with("-----")) {
            assert!(!debug.contains(line), "{debug}");
        }
    }
    for value in public {
        let value = value.as_str().expect("a string");
        assert!(!debug.contains(&value[..16]), "{debug}");
    }
}

#[test]
fn hmac_signatures_match_the_known_answer_and_verify_strictly() {
    let body = br#"{"a":1}"#;
    let tolerance = Duration::from_secs(300);
    // python3 -c 'import hmac,hashlib; print(hmac.new(b"secret", b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest())'
    const TAG: &str = "49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686";
    let expected = format!("t=1700000000,v1={TAG}");
    assert_eq!(hmac_signature(b"secret", 1_700_000_000, body), expected);

    let verify = |secret: &[u8], header: &str, body: &[u8], now: i64| {
        verify_hmac_signature(secret, header, body, now, tolerance)
    };
    assert!(verify(b"secret", &expected, body, 1_700_000_000));
    assert!(verify(b"secret", &expected, body, 1_700_000_300));
    assert!(verify(b"secret", &expected, body, 1_699_999_700));
    let upper = format!("t=1700000000,v1={}", TAG.to_uppercase());
    assert!(verify(b"secret", &upper, body, 1_700_000_000));
    let extended = format!("t=1700000000, v1=00ff, v1={TAG}, v2=later");
    assert!(verify(b"secret", &extended, body, 1_700_000_000));

    assert!(
        !verify(b"secret", &expected, br#"{"a":2}"#, 1_700_000_000),
        "tampered body"
    );
    assert!(
        !verify(b"secreT", &expected, body, 1_700_000_000),
        "wrong secret"
    );
    assert!(
        !verify(b"secret", &expected, body, 1_700_000_301),
        "too late"
    );
    assert!(
        !verify(b"secret", &expected, body, 1_699_999_699),
        "too early"
    );
    let moved = format!("t=1700000100,v1={TAG}");
    assert!(
        !verify(b"secret", &moved, body, 1_700_000_100),
        "the timestamp is signed"
    );
    for malformed in [
        String::new(),
        "garbage".to_owned(),
        "t=1700000000".to_owned(),
        format!("v1={TAG}"),
        format!("t=soon,v1={TAG}"),
        format!("t=1700000000,v1={}", &TAG[1..]),
        format!("t=1700000000,v1=zz{}", &TAG[2..]),
        format!("t=1700000000,t=1700000000,v1={TAG}"),
        format!("t=1700000000,v1={TAG},v1"),
    ] {
        assert!(
            !verify(b"secret", &malformed, body, 1_700_000_000),
            "{malformed}"
        );
    }
}

#[test]
fn ed25519_outbound_tokens_are_signed_with_the_keysets_own_parsed_key() {
    let pem = generate_ed25519_pem();
    let keys =
        Keyset::from_pems("pacer", &[("ed".to_owned(), SecretString::from(pem))]).expect("loads");
    let other = Keyset::generate("pacer");
    let jwks: JwkSet = serde_json::from_value(keys.jwks()).expect("a JWKS");
    let public = DecodingKey::from_jwk(&jwks.keys[0]).expect("a decoding key");
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["https://downstream.example"]);
    validation.set_issuer(&["pacer"]);
    let outbound = |keys: &Keyset| {
        keys.sign_outbound(
            "https://downstream.example",
            "subject",
            Duration::from_secs(60),
        )
        .expect("signed")
    };
    for _ in 0..3 {
        let token = outbound(&keys);
        let header = jsonwebtoken::decode_header(&token).expect("a header");
        assert_eq!(
            (header.alg, header.kid.as_deref(), header.typ.as_deref()),
            (Algorithm::EdDSA, Some("ed"), Some("JWT"))
        );
        assert!(jsonwebtoken::decode::<Value>(&token, &public, &validation).is_ok());
        // Another key's signature over the same kind of claims does not verify.
        let forged = outbound(&other);
        let (body, _) = token.rsplit_once('.').expect("three parts");
        let (_, signature) = forged.rsplit_once('.').expect("three parts");
        assert!(
            jsonwebtoken::decode::<Value>(format!("{body}.{signature}"), &public, &validation)
                .is_err()
        );
    }
}
