//! Property tests of routing: whatever the Host and the target, routing never panics, never
//! yields a name that fails validation, never decodes the path (so `..`, `%2F` and `%2f` cannot
//! reach another tunnel), and strips exactly the `/t/<name>` prefix. The seed corpus
//! `ingress/tests/corpus/routing.txt` runs first.

use proptest::prelude::*;
use tunnel_schemas::names::TunnelName;

use super::*;

const DOMAIN: &str = "tunnel.test";

/// Cases per property unless `PROPTEST_CASES` says otherwise.
const DEFAULT_CASES: u32 = 512;

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = DEFAULT_CASES;
    }
    config
}

/// Checks every property of one routing decision.
fn routes_sanely(host: Option<&str>, target: &str) {
    let Some(route) = route(host, target, DOMAIN) else { return };
    let name = route.name.as_str();
    assert!(TunnelName::parse(name).is_ok(), "{name:?} from {host:?} {target:?}");
    assert!(!name.contains(['.', '%', '/']), "{name:?}");
    if host.and_then(|host| name_from_host(host, DOMAIN)).is_some() {
        assert_eq!(route.target, target, "host routing forwards the target untouched");
        return;
    }
    // Path routing: the name is the literal first segment, and only `/t/<name>` is removed.
    let segment = format!("{PATH_PREFIX}{name}");
    let (prefix, rest) = target.split_at_checked(segment.len()).expect("the target holds the prefix");
    assert_eq!(prefix.to_ascii_lowercase(), segment, "{target:?} routed to {name:?}");
    assert!(rest.is_empty() || rest.starts_with(['/', '?']), "{target:?}: the name is a whole segment");
    let expected = if rest.starts_with('/') { rest.to_owned() } else { format!("/{rest}") };
    assert_eq!(route.target, expected);
}

/// Checks [`public_host`] on raw header bytes and a target: no panic, and a host it returns is
/// well formed.
fn reads_host_sanely(fields: &[Vec<u8>], target: &str) {
    let mut headers = HeaderMap::new();
    for field in fields {
        if let Ok(value) = axum::http::HeaderValue::from_bytes(field) {
            headers.append(header::HOST, value);
        }
    }
    let Ok(uri) = target.parse::<Uri>() else { return };
    if let Ok(Some(host)) = public_host(&headers, &uri) {
        assert!(is_host(host), "{host:?}");
        assert!(!host.contains('@'), "{host:?}");
    }
}

#[test]
fn corpus() {
    let lines = include_str!("../../tests/corpus/routing.txt").lines().filter(|l| !l.starts_with('#'));
    for line in lines {
        let (host, target) = line.split_once(' ').expect("host and target");
        let host = (host != "-").then_some(host);
        routes_sanely(host, target);
        reads_host_sanely(&host.map(|h| h.as_bytes().to_vec()).into_iter().collect::<Vec<_>>(), target);
    }
}

/// Hosts near the interesting ones: labels, the domain in any case, ports, dots, userinfo.
fn host() -> impl Strategy<Value = String> {
    let label = prop_oneof!["[a-z0-9-]{0,12}", "[a-zA-Z0-9@%._-]{0,12}", any::<String>()];
    let domain = prop_oneof![Just("tunnel.test"), Just("TUNNEL.test"), Just("tunnel.test."), Just("other.test")];
    let port = prop_oneof![Just(String::new()), "(:[0-9]{0,6}){1,2}"];
    prop_oneof![(label, domain, port).prop_map(|(l, d, p)| format!("{l}.{d}{p}")), any::<String>()]
}

/// Targets near the interesting ones: `/t/` with dot segments, encoded slashes, queries.
fn target() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/"),
        Just(".."),
        Just("."),
        Just("%2F"),
        Just("%2f"),
        Just("%2e%2e"),
        Just("?"),
        Just("demo"),
        Just("DEMO"),
        Just("-"),
        Just("é"),
        Just("\\"),
    ];
    prop_oneof![
        proptest::collection::vec(piece, 0..8).prop_map(|pieces| format!("/t/{}", pieces.concat())),
        "/t/[a-zA-Z0-9./%?-]{0,20}",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn routing_never_yields_an_invalid_name_or_decodes_the_path(host in proptest::option::of(host()), target in target()) {
        routes_sanely(host.as_deref(), &target);
    }

    #[test]
    fn a_valid_name_in_the_path_always_routes(name in "[a-z0-9]{3,10}", rest in "[/?][a-z0-9/%.?=-]{0,20}") {
        let target = format!("/t/{name}{rest}");
        let route = route(None, &target, DOMAIN);
        if TunnelName::parse(&name).is_ok() {
            let route = route.expect("routes");
            prop_assert_eq!(route.name.as_str(), name.as_str());
            prop_assert!(route.target.starts_with('/'));
        }
    }

    #[test]
    fn reading_the_host_never_panics(
        fields in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..3),
        target in prop_oneof![target(), "http://[a-z@.:]{0,20}/x"],
    ) {
        reads_host_sanely(&fields, &target);
    }
}
