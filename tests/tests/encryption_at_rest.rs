//! Encryption at rest: a recorded tunnel's exchange is stored by JetStream, and with the
//! server's encryption on, no file of its store holds the exchange's body in the clear; with it
//! off (the control, which shows the search finds what is there) the same search finds it.
//! The key can be rotated: the store written with the old key is read with the new one.

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use futures_util::StreamExt;
use tunnel_schemas::subjects::RECORDING_STREAM;
use tunnel_tests::{DEADLINE, EnvOptions, TestEnv, Upstream, within};

/// 32 random bytes in hex: a body no file holds by chance.
fn marker() -> String {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes).expect("random bytes");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Waits until the recording of tunnel `name` that holds `marker` can be read back through
/// JetStream (so the server has stored it).
async fn recorded(env: &TestEnv, name: &str, marker: &str) {
    let js = async_nats::jetstream::new(env.nats_as("admin", "test").await);
    let stream = js.get_stream(RECORDING_STREAM).await.expect("recordings stream");
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subject: tunnel_schemas::subjects::recording(name, ">"),
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer.messages().await.expect("messages");
    let found = async {
        while let Some(message) = messages.next().await {
            let message = message.expect("message");
            if message.payload.windows(marker.len()).any(|window| window == marker.as_bytes()) {
                return;
            }
        }
        panic!("the recordings ended without the marker");
    };
    within(DEADLINE, "the recording read back", found).await;
}

/// Every file under `dir`, recursively, with its contents.
fn files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("store directory").filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files(&path));
        } else {
            let contents = std::fs::read(&path).expect("store file");
            found.push((path, contents));
        }
    }
    found
}

/// The files of the store under `dir` that hold `marker`, and the bytes of the recordings'
/// message blocks (to show the exchange is on disk either way).
fn search(dir: &std::path::Path, marker: &str) -> (Vec<std::path::PathBuf>, usize) {
    let all = files(dir);
    let holding = all
        .iter()
        .filter(|(_, contents)| contents.windows(marker.len()).any(|window| window == marker.as_bytes()))
        .map(|(path, _)| path.clone())
        .collect();
    let blocks = all
        .iter()
        .filter(|(path, _)| {
            path.to_string_lossy().contains(&format!("/streams/{RECORDING_STREAM}/msgs/"))
                && path.extension().is_some_and(|ext| ext == "blk")
        })
        .map(|(_, contents)| contents.len())
        .sum();
    (holding, blocks)
}

/// Runs a recorded tunnel on NATS with encryption at rest under `key` (or off), sends `marker`
/// through it both ways, waits until it is recorded, stops the server (which flushes its store)
/// and returns the environment, stopped, with the search's result.
async fn record_and_stop(key: Option<&str>, marker: &str) -> (TestEnv, Vec<std::path::PathBuf>, usize) {
    let mut env =
        TestEnv::start_with(EnvOptions { nats_encryption_key: key.map(str::to_owned), ..EnvOptions::default() }).await;
    let upstream = Upstream::start().await;
    let state = tempfile::tempdir().expect("state dir");
    let tunnel = env.recorded_tunnel(upstream.port(), "at-rest", state.path()).await;
    let response = env.request(reqwest::Method::POST, "at-rest", "/echo").body(marker.to_owned()).send();
    let response = within(DEADLINE, "a response", response).await.expect("response");
    assert_eq!(response.text().await.expect("body"), marker, "the body crossed the tunnel");
    recorded(&env, "at-rest", marker).await;
    tunnel.stop().await;
    env.nats.server().stop();
    let (holding, blocks) = search(&env.nats.server().store_dir(), marker);
    assert!(blocks > 2 * marker.len(), "the recording is on disk ({blocks} bytes of message blocks)");
    (env, holding, blocks)
}

#[tokio::test]
async fn recordings_are_not_on_disk_in_the_clear_with_encryption_on() {
    let marker = marker();
    let (_env, holding, _) = record_and_stop(None, &marker).await;
    assert!(!holding.is_empty(), "control: without encryption the search finds the body in the store");

    let marker = self::marker();
    let (_env, holding, blocks) = record_and_stop(Some(&self::marker()), &marker).await;
    assert!(holding.is_empty(), "encrypted, no file holds the body ({blocks} bytes of blocks): {holding:?}");
}

#[tokio::test]
async fn the_key_rotates_without_losing_what_the_old_one_wrote() {
    let (old, new) = (marker(), marker());
    let marker = self::marker();
    let (mut env, holding, _) = record_and_stop(Some(&old), &marker).await;
    assert!(holding.is_empty(), "{holding:?}");
    // Once with both keys: the server reads with the old one and re-encrypts with the new.
    env.nats.server().restart_with_key(&new, Some(&old));
    recorded(&env, "at-rest", &marker).await;
    env.nats.server().stop();
    // Then the new key alone reads the store.
    env.nats.server().restart_with_key(&new, None);
    recorded(&env, "at-rest", &marker).await;
}
