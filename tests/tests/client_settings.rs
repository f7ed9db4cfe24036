//! The client as a user sets it up: `tunnel login`, `tunnel config`, the settings file's defaults
//! and named tunnels (`tunnel start`), several tunnels on one client (`--also`), the Host header
//! the local service gets, completions, and errors that say what to do.

use std::collections::HashMap;

use nix::sys::signal::Signal;
use reqwest::Method;
use tunnel_tests::{Cli, EnvOptions, TestEnv, Upstream, run_tunnel};

/// `tunnel <args>` with `dir`'s settings, to its end (stdout piped: JSON lines); its exit code
/// and last JSON line.
async fn tunnel(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let (code, stdout, stderr) = run_tunnel(dir, args).await;
    let line = stdout.lines().last().unwrap_or_default();
    let json = serde_json::from_str(line).unwrap_or_else(|e| panic!("tunnel {args:?}: {e}: {stdout}{stderr}"));
    (code, json)
}

#[tokio::test]
async fn login_and_config_set_are_used_and_flags_then_environment_win_over_the_file() {
    let env = TestEnv::start_with(EnvOptions { auth: "tokens", ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    env.admin(&["account", "create", "acme"]).await;
    let created = env.admin(&["token", "create", "acme", "--name", "*-acme"]).await;
    let token = created["token"].as_str().expect("token");
    let dir = tempfile::tempdir().expect("temp dir");

    let (code, saved) = tunnel(dir.path(), &["login", token]).await;
    assert_eq!(code, Some(0), "{saved}");
    let file = dir.path().join("config.toml");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("settings written").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the token is readable by its user alone");
    }
    assert_eq!(tunnel(dir.path(), &["config", "set", "server", &env.server_url()]).await.0, Some(0));
    let (code, refused) = tunnel(dir.path(), &["config", "set", "defaults.recrod", "true"]).await;
    assert_eq!((code, refused["code"].as_str()), (Some(1), Some("invalid_arguments")), "a typo is refused");
    let (_, shown) = tunnel(dir.path(), &["config", "show"]).await;
    assert_eq!(shown["server"]["source"], "file");
    assert_eq!(shown["token"]["set"], true);
    assert!(!shown.to_string().contains(token), "the token is never shown");

    let port = upstream.port().to_string();
    let mut from_file = Cli::start_in(dir.path(), &["http", &port, "--name", "a-acme"], &[]);
    assert_eq!(from_file.next_json().await["event"], "ready", "server and token came from the file");
    assert_eq!(env.get("a-acme", "/").await.status(), 200);

    let nowhere = [("TUNNEL_SERVER", "ws://127.0.0.1:9")];
    let mut from_env = Cli::start_in(dir.path(), &["http", &port, "--name", "b-acme"], &nowhere);
    assert_eq!(from_env.next_json().await["event"], "disconnected", "the environment wins over the file");
    let server = env.server_url();
    let mut from_flag = Cli::start_in(dir.path(), &["http", &port, "--name", "b-acme", "--server", &server], &nowhere);
    assert_eq!(from_flag.next_json().await["event"], "ready", "a flag wins over the environment");

    let wrong = [("TUNNEL_TOKEN", "tt_wrong")];
    let mut bad_token = Cli::start_in(dir.path(), &["http", &port, "--name", "c-acme"], &wrong);
    let error = bad_token.next_json().await;
    assert_eq!(error["code"], "unauthorized");
    assert!(error["hint"].as_str().is_some_and(|hint| hint.contains("tunnel login")), "says what to do: {error}");
    assert_eq!(bad_token.exit_code().await, Some(1));
}

#[tokio::test]
async fn start_serves_the_named_tunnels_of_the_file_with_their_defaults_on_one_client() {
    let env = TestEnv::start().await;
    let (mut web, mut api) = (Upstream::start().await, Upstream::start().await);
    let dir = tempfile::tempdir().expect("temp dir");
    let settings = format!(
        "# my tunnels\nserver = \"{server}\"\n\n[defaults]\nhost_header = \"rewrite\"\n\n\
         [tunnels.web]\nport = {web}\n\n[tunnels.api]\nto = \"http://127.0.0.1:{api}\"\nname = \"acme-api\"\n\
         host_header = \"preserve\"\n",
        server = env.server_url(),
        web = web.port(),
        api = api.port(),
    );
    std::fs::write(dir.path().join("config.toml"), settings).expect("settings");

    let (code, error) = tunnel(dir.path(), &["start", "nope"]).await;
    assert_eq!(code, Some(1));
    assert!(error["message"].as_str().is_some_and(|m| m.contains("api, web")), "names what there is: {error}");

    let mut cli = Cli::start_in(dir.path(), &["start"], &[]);
    let mut ready = HashMap::new();
    while ready.len() < 2 {
        let line = cli.next_event("ready").await;
        ready.insert(line["tunnel"].as_str().expect("tagged").to_owned(), line["url"].clone());
    }
    assert!(ready.contains_key("web") && ready.contains_key("acme-api"), "{ready:?}");

    assert_eq!(env.get("web", "/echo").await.status(), 200);
    let seen = web.next_request().await;
    assert_eq!(seen.header("host"), format!("localhost:{}", web.port()), "the default rewrites Host");
    assert_eq!(env.get("acme-api", "/echo").await.status(), 200);
    assert_eq!(api.next_request().await.header("host"), env.public_host("acme-api"), "a table overrides it");
    let logged = cli.next_event("request").await;
    assert_eq!(logged["tunnel"], "web", "request lines say which tunnel");

    cli.signal(Signal::SIGTERM);
    assert_eq!(cli.exit_code().await, Some(0));
    let mut again = Cli::start_in(dir.path(), &["start", "web"], &[]);
    assert_eq!(again.next_json().await["event"], "ready", "the names were released; one tunnel is untagged");
}

#[tokio::test]
async fn also_adds_tunnels_that_take_the_command_s_flags() {
    let env = TestEnv::start().await;
    let (one, mut two) = (Upstream::start().await, Upstream::start().await);
    let also = format!("{}:also-two", two.port());
    let args = [&one.port().to_string()[..], "--name", "also-one", "--also", &also, "--host-header", "app.local:8080"];
    let mut cli = Cli::start(&env.server_url(), &args);
    let mut names =
        vec![cli.next_event("ready").await["tunnel"].clone(), cli.next_event("ready").await["tunnel"].clone()];
    names.sort_by_key(ToString::to_string);
    assert_eq!(names, ["also-one", "also-two"]);
    assert_eq!(env.get("also-two", "/echo").await.status(), 200);
    assert_eq!(two.next_request().await.header("host"), "app.local:8080", "--also inherits --host-header");
}

#[tokio::test]
async fn an_unreachable_local_port_is_named_to_the_visitor_and_the_developer() {
    let env = TestEnv::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bound").local_addr().expect("address").port();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = env.server_url();
    let mut cli = Cli::start_in(dir.path(), &["http", &closed.to_string(), "--name", "gone", "--server", &server], &[]);
    assert_eq!(cli.next_json().await["event"], "ready");
    let warning = std::fs::read_to_string(dir.path().join("stderr")).expect("stderr");
    assert!(warning.contains(&format!("localhost:{closed}")), "warned at start: {warning}");

    let page = env.get("gone", "/").await;
    assert_eq!(page.status(), 502);
    let page = page.text().await.expect("page");
    assert!(page.contains(&format!("http://localhost:{closed} unreachable: connection refused")), "{page}");
    let json =
        env.request(Method::GET, "gone", "/").header("accept", "application/json").send().await.expect("response");
    let json: serde_json::Value = json.json().await.expect("json");
    assert_eq!(json["error"]["code"], "upstream_unreachable");
    assert!(json["error"]["detail"].as_str().is_some_and(|d| d.contains(&closed.to_string())), "{json}");
}

#[tokio::test]
async fn a_taken_name_says_what_to_do() {
    let env = TestEnv::start().await;
    let upstream = Upstream::start().await;
    let port = upstream.port().to_string();
    let mut first = Cli::start(&env.server_url(), &[&port, "--name", "taken"]);
    assert_eq!(first.next_json().await["event"], "ready");
    let mut second = Cli::start(&env.server_url(), &[&port, "--name", "taken"]);
    let error = second.next_json().await;
    assert_eq!(error["code"], "name_in_use");
    assert!(error["hint"].as_str().is_some_and(|hint| hint.contains("--name")), "{error}");
}

#[tokio::test]
async fn completions_cover_every_shell_and_command() {
    let dir = tempfile::tempdir().expect("temp dir");
    for shell in ["bash", "zsh", "fish"] {
        let (code, script, stderr) = run_tunnel(dir.path(), &["completions", shell]).await;
        assert_eq!(code, Some(0), "{stderr}");
        for word in ["login", "start", "host-header", "also"] {
            assert!(script.contains(word), "{shell} completes {word}");
        }
    }
    let (code, _, stderr) = run_tunnel(dir.path(), &["completions", "tcsh"]).await;
    assert_eq!(code, Some(2), "an unknown shell is refused: {stderr}");
}
