//! `tunnel`: expose a local HTTP service at a public URL.

use std::io::{IsTerminal, Write};

use clap::{CommandFactory, Parser, Subcommand};
use tokio::sync::mpsc;
use tunnel_client::config::{ClientConfig, TunnelSpec};
use tunnel_client::{Event, Tagged, commands, plan, status};

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
    /// Start the tunnels named in the settings file's [tunnels] tables (all of them when none
    /// is named), on one client.
    Start(StartArgs),
    /// Show a tunnel's trail: every request's audit record, or its recorded exchanges; --follow
    /// for a live tail.
    Trail(Logged<commands::trail::TrailArgs>),
    /// Send recorded exchanges again, to the tunnel, another tunnel or any URL; --compare
    /// checks each response against the recorded one.
    Replay(Logged<commands::replay::ReplayArgs>),
    /// Write recorded exchanges to a file, as JSON lines or HAR.
    Export(Logged<commands::export::ExportArgs>),
    /// Show or change the settings file (server, token, default flags, named tunnels).
    Config(Logged<ConfigArgs>),
    /// Store your account token in the settings file (readable by you alone).
    Login(Logged<LoginArgs>),
    /// Print a shell completion script: tunnel completions bash > ~/.local/share/bash-completion/completions/tunnel
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
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
    #[arg(long, global = true)]
    json: bool,
}

/// `tunnel config`.
#[derive(Debug, clap::Args)]
struct ConfigArgs {
    #[command(subcommand)]
    command: Option<commands::config::ConfigCommand>,
}

/// `tunnel login`.
#[derive(Debug, clap::Args)]
struct LoginArgs {
    /// The account token (`tt_…`) or JWT from your operator.
    token: String,
}

/// Flags of the tunnels a client opens, `tunnel http`'s and `tunnel start`'s.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// WebSocket URL of the http-tunnel server [default: the settings file's, or
    /// ws://127.0.0.1:7070].
    #[arg(long, value_name = "WS_URL", env = "TUNNEL_SERVER")]
    server: Option<String>,
    /// Account token (`tt_…`) from the operator, or a JWT [default: the settings file's];
    /// never printed.
    #[arg(long, env = "TUNNEL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print one JSON object per line even on a terminal (the default when stdout is not one).
    #[arg(long)]
    json: bool,
    /// Print one line per event on a terminal too, instead of the live status view (as do
    /// TUNNEL_NO_TUI=1 and TERM=dumb).
    #[arg(long, conflicts_with = "json")]
    plain: bool,
    #[command(flatten)]
    inspect: commands::inspect::InspectArgs,
    /// Send a span of every forwarded request to this OTLP/HTTP collector
    /// (http://localhost:4318), joined to the server's trace of the request.
    #[arg(long, value_name = "URL", env = "TUNNEL_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
}

#[derive(Debug, clap::Args)]
struct HttpArgs {
    /// Local port to forward to (http://localhost:<PORT>).
    #[arg(required_unless_present = "to")]
    port: Option<u16>,
    /// Forward to this URL instead of a local port (http://192.168.1.20:8080).
    #[arg(long, value_name = "URL", conflicts_with = "port")]
    to: Option<String>,
    /// Tunnel name to request (a DNS label); random when absent.
    #[arg(long, value_name = "NAME", env = "TUNNEL_NAME")]
    name: Option<String>,
    /// Record every exchange (requests and responses, bodies up to the server's cap, credentials
    /// masked) for `tunnel trail --recorded` and `tunnel replay`; --record=false overrides the
    /// settings file's default.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", require_equals = true, value_name = "BOOL")]
    record: Option<bool>,
    /// Serve the name together with the other clients of your account that pass --shared
    /// (needs --name and a token); each request goes to one of them.
    #[arg(long, requires = "name")]
    shared: bool,
    /// The Host header the local service gets: `rewrite` (its own, localhost:3000), a value
    /// (app.local), or `preserve` (the public one; the default).
    #[arg(long, value_name = "rewrite|VALUE")]
    host_header: Option<String>,
    /// Another tunnel on the same client: PORT, PORT:NAME, URL or URL:NAME; repeatable. It
    /// takes this command's other flags.
    #[arg(long, value_name = "PORT:NAME", value_parser = tunnel_client::plan::parse_also)]
    also: Vec<TunnelSpec>,
    #[command(flatten)]
    policy: commands::policy::PolicyArgs,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Debug, clap::Args)]
struct StartArgs {
    /// Names of [tunnels.<name>] tables in the settings file; all of them when none is given.
    names: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

// One developer's traffic fits one thread; a single-threaded runtime saves the wake-ups between
// worker threads that dominate at low load (measured: about half the CPU per request at one
// connection). TOKIO_WORKER_THREADS does not apply here.
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    tunnel_kit::alloc::tune();
    let cli = Cli::parse();
    let settings = match tunnel_client::config::ClientConfig::load() {
        Ok(settings) => settings,
        Err(e) => {
            let hint = "fix the file, or see it with tunnel config show and change it with tunnel config set";
            return commands::fail_with_hint(!stdout_is_terminal(), "invalid_settings", &e.to_string(), Some(hint));
        }
    };
    if let Some(ca_file) = cli.ca_file.as_ref().or(settings.ca_file.as_ref())
        && let Err(e) = tunnel_client::trust::add_ca_file(ca_file)
    {
        return commands::fail(!stdout_is_terminal(), "invalid_ca_file", &e.to_string());
    }
    let (specs, client) = match cli.command {
        Command::Http(args) => http_specs(args),
        Command::Start(args) => match start_specs(&args, &settings) {
            Ok(specs) => (specs, args.client),
            Err(message) => {
                return commands::fail(args.client.json || !stdout_is_terminal(), "invalid_arguments", &message);
            }
        },
        Command::Trail(Logged { args, json }) => {
            return commands::trail::run(args, json || !stdout_is_terminal()).await;
        }
        Command::Replay(Logged { args, json }) => {
            return commands::replay::run(args, json || !stdout_is_terminal()).await;
        }
        Command::Export(Logged { args, json }) => {
            return commands::export::run(args, json || !stdout_is_terminal()).await;
        }
        Command::Config(Logged { args, json }) => {
            let command = args.command.unwrap_or(commands::config::ConfigCommand::Show);
            return commands::config::run(command, json || !stdout_is_terminal());
        }
        Command::Login(Logged { args, json }) => {
            return commands::config::login(&args.token, json || !stdout_is_terminal());
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tunnel", &mut std::io::stdout());
            return std::process::ExitCode::SUCCESS;
        }
        Command::Admin(Logged { args, json }) => {
            return commands::admin::run(args, json || !stdout_is_terminal()).await;
        }
        Command::Usage(Logged { args, json }) => {
            return commands::usage::run(args, json || !stdout_is_terminal()).await;
        }
    };
    let view = status::wanted(client.json, client.plain);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let colours = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    // Log lines on the terminal would tear the status view: it shows them itself, unless stderr
    // goes elsewhere (`2>tunnel.log`).
    let logs = if view && std::io::stderr().is_terminal() {
        let (lines, received) = status::log::LogLines::new();
        logs.with_writer(lines).with_ansi(false).without_time().init();
        Some(received)
    } else {
        logs.with_writer(std::io::stderr).with_ansi(colours).init();
        None
    };
    let json = client.json || !stdout_is_terminal();
    let common = plan::Common {
        server: client.server.or(settings.server).unwrap_or_else(|| tunnel_client::DEFAULT_SERVER.to_owned()),
        token: client.token.or(settings.token),
        state_dir: tunnel_client::state::default_dir(),
    };
    let mut tunnels = Vec::with_capacity(specs.len());
    for (key, spec) in specs {
        match plan::options(spec.or(&settings.defaults), key.as_deref(), &common) {
            Ok(options) => tunnels.push(tunnel_client::Options { stats: view.then(Default::default), ..options }),
            Err(e) => return commands::fail(json, e.code(), &e.to_string()),
        }
    }
    for options in &tunnels {
        if let Err(problem) = options.target.probe().await {
            eprintln!("warning: {problem}; visitors get a 502 page naming it until it answers");
        }
    }
    let shutdown = tunnel_kit::shutdown::on_signal();
    // One inspector for every tunnel of the client; each tunnel's exchanges carry its name.
    if let Some(inspector) = client.inspect.start(&shutdown).await {
        for options in &mut tunnels {
            options.inspector = Some(inspector.handle(options.target.clone(), options.host_header.clone()));
        }
    }
    let trace_settings = tunnel_kit::traces::TraceSettings {
        otlp_endpoint: client.otlp_endpoint.unwrap_or_default(),
        ..Default::default()
    };
    let traces =
        match trace_settings.check().map_err(|e| e.to_string()).and_then(|()| {
            tunnel_kit::traces::Traces::start("tunnel-client", &trace_settings).map_err(|e| e.to_string())
        }) {
            Ok(traces) => traces,
            Err(e) => return commands::fail(json, "invalid_arguments", &e),
        };
    for options in &mut tunnels {
        options.traces = traces.clone();
    }
    let several = tunnels.len() > 1;
    let mut running = Vec::with_capacity(tunnels.len());
    let mut sources = Vec::with_capacity(tunnels.len());
    for (index, options) in tunnels.into_iter().enumerate() {
        let (events, received) = mpsc::channel(1024);
        let key = options.name.clone().unwrap_or_else(|| format!("tunnel {}", index + 1));
        sources.push((key, options.target.to_string(), options.stats.clone(), received));
        running.push((options, events));
    }
    let printer = if view {
        let sources = sources
            .into_iter()
            .filter_map(|(key, target, stats, events)| Some(status::Source { key, target, stats: stats?, events }))
            .collect();
        tokio::spawn(status::run(sources, logs, shutdown.clone()))
    } else {
        let events = sources.into_iter().map(|(_, _, _, events)| events).collect();
        tokio::spawn(print_lines(events, json, several))
    };
    let result = tunnel_client::run_all(running, shutdown).await;
    let _ = printer.await;
    traces.shutdown().await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Each refusal was reported as its tunnel's event.
        Err(_) if several => std::process::ExitCode::FAILURE,
        Err(e) => commands::fail_with_hint(json, e.code(), &e.to_string(), e.hint()),
    }
}

/// The tunnels `tunnel http` describes: its own, then each `--also`, with its flags.
fn http_specs(args: HttpArgs) -> (Vec<(Option<String>, TunnelSpec)>, ClientArgs) {
    let flags = TunnelSpec {
        port: args.port,
        to: args.to,
        name: args.name,
        record: args.record,
        shared: args.shared.then_some(true),
        host_header: args.host_header,
        basic_auth: args.policy.basic_auth,
        allow_cidr: args.policy.allow_cidr,
        deny_cidr: args.policy.deny_cidr,
        require_header: args.policy.require_header,
    };
    let mut specs = vec![(None, flags.clone())];
    for also in args.also {
        let inherited = TunnelSpec { port: None, to: None, name: None, shared: None, ..flags.clone() };
        specs.push((None, also.or(&inherited)));
    }
    (specs, args.client)
}

/// The tunnels of the settings file `tunnel start` names.
fn start_specs(args: &StartArgs, settings: &ClientConfig) -> Result<Vec<(Option<String>, TunnelSpec)>, String> {
    let path =
        tunnel_client::config::path().map_or_else(|| "the settings file".to_owned(), |p| p.display().to_string());
    if settings.tunnels.is_empty() {
        return Err(format!("no [tunnels] in {path}: add one with tunnel config set tunnels.web.port 3000"));
    }
    if args.names.is_empty() {
        return Ok(settings.tunnels.iter().map(|(key, spec)| (Some(key.clone()), spec.clone())).collect());
    }
    args.names
        .iter()
        .map(|name| match settings.tunnels.get(name) {
            Some(spec) => Ok((Some(name.clone()), spec.clone())),
            None => {
                let known: Vec<&str> = settings.tunnels.keys().map(String::as_str).collect();
                Err(format!("no [tunnels.{name}] in {path}; it has: {}", known.join(", ")))
            }
        })
        .collect()
}

fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// Prints the tunnels' `events` as lines, human or JSON, each tagged with its tunnel's name when
/// there are `several`, until they all end.
async fn print_lines(events: Vec<mpsc::Receiver<Event>>, json: bool, several: bool) {
    let (tagged, mut received) = mpsc::channel(1024);
    for mut events in events {
        let tagged = tagged.clone();
        tokio::spawn(async move {
            let mut name = None;
            while let Some(event) = events.recv().await {
                if let Event::Ready { name: granted, .. } = &event {
                    name = Some(granted.clone());
                }
                let tunnel = if several { Some(name.clone().unwrap_or_else(|| "?".to_owned())) } else { None };
                if tagged.send(Tagged { tunnel, event }).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tagged);
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
}

fn push_line(lines: &mut String, json: bool, event: &Tagged) {
    if json {
        lines.push_str(&serde_json::to_string(event).unwrap_or_default());
    } else {
        lines.push_str(&event.human());
    }
    lines.push('\n');
}
