//! `tunnel`: expose a local HTTP service at a public URL.

use std::io::{IsTerminal, Write};

use clap::{Parser, Subcommand};
use tokio::sync::mpsc;
use tunnel_client::{Event, Options, Target, commands};

/// Expose a local HTTP service at a public URL through an http-tunnel server.
#[derive(Debug, Parser)]
#[command(name = "tunnel", version)]
struct Cli {
    /// A PEM file of CA certificates to trust besides the system's (a private CA); a server
    /// certificate that neither verifies is refused.
    #[arg(long, global = true, value_name = "FILE", env = "TUNNEL_CA_FILE")]
    ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Forward public HTTP requests to a local port or URL.
    Http(HttpArgs),
    /// Show a tunnel's trail: every request's audit record, or its recorded exchanges; --follow
    /// for a live tail.
    Trail(Logged<commands::trail::TrailArgs>),
    /// Send recorded exchanges again, to the tunnel, another tunnel or any URL; --compare
    /// checks each response against the recorded one.
    Replay(Logged<commands::replay::ReplayArgs>),
    /// Write recorded exchanges to a file, as JSON lines or HAR.
    Export(Logged<commands::export::ExportArgs>),
    /// Operators: accounts, tokens, names, policies and quotas (needs NATS credentials).
    Admin(Logged<commands::admin::AdminArgs>),
    /// Operators: usage of a tunnel or an account per minute, hour, day or month, with its
    /// quota (needs NATS credentials).
    Usage(Logged<commands::usage::UsageArgs>),
}

/// A log command's flags, with the output choice every command shares.
#[derive(Debug, clap::Args)]
struct Logged<T: clap::Args> {
    #[command(flatten)]
    args: T,
    /// Print JSON lines even on a terminal (the default when stdout is not one).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct HttpArgs {
    /// Local port to forward to (http://localhost:<PORT>).
    #[arg(required_unless_present = "to")]
    port: Option<u16>,
    /// Forward to this URL instead of a local port (http://192.168.1.20:8080).
    #[arg(long, value_name = "URL", conflicts_with = "port")]
    to: Option<String>,
    /// WebSocket URL of the http-tunnel server [default: the settings file's, or
    /// ws://127.0.0.1:7070].
    #[arg(long, value_name = "WS_URL", env = "TUNNEL_SERVER")]
    server: Option<String>,
    /// Tunnel name to request (a DNS label); random when absent.
    #[arg(long, value_name = "NAME", env = "TUNNEL_NAME")]
    name: Option<String>,
    /// Account token (`tt_…`) from the operator, or a JWT [default: the settings file's];
    /// never printed.
    #[arg(long, env = "TUNNEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Record every exchange (requests and responses, bodies up to the server's cap, credentials
    /// masked) for `tunnel trail --recorded` and `tunnel replay`.
    #[arg(long)]
    record: bool,
    /// Serve the name together with the other clients of your account that pass --shared
    /// (needs --name and a token); each request goes to one of them.
    #[arg(long, requires = "name")]
    shared: bool,
    #[command(flatten)]
    policy: commands::policy::PolicyArgs,
    #[command(flatten)]
    inspect: commands::inspect::InspectArgs,
    /// Print one JSON object per line even on a terminal (the default when stdout is not one).
    #[arg(long)]
    json: bool,
}

/// The session-host when neither a flag, the environment nor the settings file names one.
const DEFAULT_SERVER: &str = "ws://127.0.0.1:7070";

// One developer's traffic fits one thread; a single-threaded runtime saves the wake-ups between
// worker threads that dominate at low load (measured: about half the CPU per request at one
// connection). TOKIO_WORKER_THREADS does not apply here.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    tunnel_kit::alloc::tune();
    let cli = Cli::parse();
    let settings = match tunnel_client::config::ClientConfig::load() {
        Ok(settings) => settings,
        Err(e) => return commands::fail(!stdout_is_terminal(), "invalid_settings", &e.to_string()),
    };
    if let Some(ca_file) = cli.ca_file.as_ref().or(settings.ca_file.as_ref())
        && let Err(e) = tunnel_client::trust::add_ca_file(ca_file)
    {
        return commands::fail(!stdout_is_terminal(), "invalid_ca_file", &e.to_string());
    }
    let args = match cli.command {
        Command::Http(args) => args,
        Command::Trail(Logged { args, json }) => {
            return commands::trail::run(args, json || !stdout_is_terminal()).await;
        }
        Command::Replay(Logged { args, json }) => {
            return commands::replay::run(args, json || !stdout_is_terminal()).await;
        }
        Command::Export(Logged { args, json }) => {
            return commands::export::run(args, json || !stdout_is_terminal()).await;
        }
        Command::Admin(Logged { args, json }) => {
            return commands::admin::run(args, json || !stdout_is_terminal()).await;
        }
        Command::Usage(Logged { args, json }) => {
            return commands::usage::run(args, json || !stdout_is_terminal()).await;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let colours = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(colours).init();
    let json = args.json || !stdout_is_terminal();
    let target =
        match args.to.as_deref().map(Target::parse).unwrap_or_else(|| Ok(Target::port(args.port.unwrap_or(80)))) {
            Ok(target) => target,
            Err(e) => return commands::fail(json, "invalid_target", &e.to_string()),
        };
    let policy = match args.policy.build() {
        Ok(policy) => policy,
        Err(e) => return commands::fail(json, "invalid_policy", &e.to_string()),
    };
    let shutdown = tunnel_kit::shutdown::on_signal();
    let inspector = args.inspect.start(&shutdown).await.map(|inspector| inspector.handle(target.clone()));
    let options = Options {
        server: args.server.or(settings.server).unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
        target,
        name: args.name,
        record: args.record,
        state_dir: tunnel_client::state::default_dir(),
        token: args.token.or(settings.token),
        policy,
        shared: args.shared,
        inspector,
    };
    let (events, mut received) = mpsc::channel(1024);
    let printer = tokio::spawn(async move {
        let mut lines = String::new();
        while let Some(event) = received.recv().await {
            // Under load, write what has queued up with one write and one flush.
            push_line(&mut lines, json, &event);
            while let Ok(event) = received.try_recv() {
                push_line(&mut lines, json, &event);
            }
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(lines.as_bytes());
            let _ = stdout.flush();
            lines.clear();
        }
    });
    let result = tunnel_client::run(options, events, shutdown).await;
    let _ = printer.await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => commands::fail(json, e.code(), &e.to_string()),
    }
}

fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

fn push_line(lines: &mut String, json: bool, event: &Event) {
    if json {
        lines.push_str(&serde_json::to_string(event).unwrap_or_default());
    } else {
        lines.push_str(&event.human());
    }
    lines.push('\n');
}
