//! The `chat-tui` binary: reads the command line, the environment and the
//! config file, logs in before touching the terminal (so a wrong password or
//! an unreachable server is one line on a clean terminal, and a `wss://`
//! certificate seen for the first time is confirmed on it), then runs the
//! event loop: terminal input, network events and a clock tick feed
//! `app::update`, and the screen is redrawn after each batch. The terminal is
//! restored on every way out: quit, error, signal and panic.

use std::io::{self, BufRead, IsTerminal, Stdout, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chat_tui::app::{self, Action, App, Event};
use chat_tui::net::{ConnectError, NetClient, NetConfig};
use chat_tui::sanitize::sanitize;
use chat_tui::tls::{CertificateError, Fingerprint, Trust};
use chat_tui::{bench, clock, config, notify, ui};
use clap::Parser;
use crossterm::event::{
    DisableBracketedPaste, DisableFocusChange, DisableMouseCapture, EnableBracketedPaste,
    EnableFocusChange, EnableMouseCapture, Event as TermEvent, EventStream,
};
use crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use crossterm::{cursor, execute};
use futures_util::{FutureExt, StreamExt};
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;

/// Terminal client for chat-server.
///
/// Connects to SERVER (e.g. `192.168.1.23`, `host:8765`,
/// `ws://host:8765/ws` or `wss://host`) as --user. The password comes from
/// CHAT_PASSWORD or is asked for without echo. Defaults can live in
/// ~/.config/chat-tui/config.toml (server, user, rooms). A wss:// server
/// whose certificate no authority of this system vouches for is shown by
/// its fingerprint and, once confirmed, recorded in
/// ~/.config/chat-tui/known_servers. Press F1 in the client for keys and
/// commands.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Server address: HOST, HOST:PORT, ws://HOST:PORT/ws or
    /// wss://HOST:PORT/ws (default port 8765, default path /ws).
    #[arg(env = "CHAT_SERVER")]
    server: Option<String>,
    /// User name.
    #[arg(short, long, env = "CHAT_USER")]
    user: Option<String>,
    /// Room to join at start (repeatable; added to the config file's rooms).
    #[arg(short, long = "join", value_name = "ROOM")]
    join: Vec<String>,
    /// Create the account first (servers started with --open-registration).
    #[arg(long)]
    register: bool,
    /// Config file to read instead of ~/.config/chat-tui/config.toml.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Accept the wss:// server's certificate only if it has this
    /// fingerprint (as its start-up banner prints it), without asking.
    #[arg(long, env = "CHAT_TLS_FINGERPRINT", value_name = "SHA256:…")]
    fingerprint: Option<String>,
    /// Measure the render time of one frame and exit.
    #[arg(long, hide = true)]
    bench_render: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.bench_render {
        println!("{}", bench::measure(100_000, 200, 60, 500));
        return ExitCode::SUCCESS;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line (a changed certificate gets a few): the chain of
            // causes joined, no backtrace. It may quote the server: no
            // escape sequence reaches the terminal.
            eprintln!("chat-tui: {}", sanitize(&format!("{err:#}"), true));
            ExitCode::FAILURE
        }
    }
}

/// Everything needed to start, from flags, environment and config file.
struct Start {
    net: NetConfig,
    rooms: Vec<String>,
    notify: notify::Level,
}

fn resolve(cli: Cli) -> Result<Start> {
    let file = match &cli.config {
        Some(path) => config::load(path, true)?,
        None => match config::default_path() {
            Some(path) => config::load(&path, false)?,
            None => config::Config::default(),
        },
    };
    let server = cli.server.or(file.server).ok_or_else(|| {
        anyhow!("no server given: pass it as the first argument, set CHAT_SERVER, or put server = \"HOST\" in the config file")
    })?;
    let url = config::server_url(&server)?;
    let pinned = match cli.fingerprint.as_deref().filter(|f| !f.is_empty()) {
        Some(text) if url.starts_with("ws://") => bail!(
            "{url} is plain ws://: --fingerprint {text} (or CHAT_TLS_FINGERPRINT) pins the \
             certificate of a wss:// server"
        ),
        Some(text) => Some(text.parse::<Fingerprint>()?),
        None => None,
    };
    let user = cli.user.or(file.user).ok_or_else(|| {
        anyhow!("no user given: pass --user NAME, set CHAT_USER, or put user = \"NAME\" in the config file")
    })?;
    if !chat_proto::validate::is_valid_name(&user) {
        bail!("'{user}' is not a valid user name (1 to 32 of A-Z a-z 0-9 _ - .)");
    }
    let password = match std::env::var("CHAT_PASSWORD") {
        Ok(password) => password,
        Err(_) => {
            let host = url.trim_start_matches("ws://").trim_end_matches("/ws");
            rpassword::prompt_password(format!("password for {user} at {host}: "))
                .context("cannot read the password (set CHAT_PASSWORD when there is no terminal)")?
        }
    };
    let mut rooms: Vec<String> = Vec::new();
    for room in file.rooms.into_iter().chain(cli.join) {
        let room = room.trim_start_matches('#').to_owned();
        if !rooms.contains(&room) {
            rooms.push(room);
        }
    }
    let mut net = NetConfig::new(url, user, password);
    net.register = cli.register;
    net.trust = Trust {
        pinned,
        known_servers: config::known_servers_path(),
    };
    Ok(Start {
        net,
        rooms,
        notify: file.notify.unwrap_or_default(),
    })
}

fn run(cli: Cli) -> Result<()> {
    let start = resolve(cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let url = start.net.url.clone();
        let user = start.net.user.clone();
        let net = connect(start.net).await?;
        let mut app = App::new(user, url, clock::local);
        app.admin = net.session.admin;
        app.features = net.session.features.iter().cloned().collect();
        app.notify_level = start.notify;
        let mut joins = Vec::new();
        for room in &start.rooms {
            if let Some(Action::Net(command)) = app.join(room) {
                joins.push(command);
            }
        }
        // Then the account's rooms from other devices, with unread counts.
        joins.extend(app.open_account_rooms(&net.session.rooms));
        if !app.rooms.is_empty() {
            app.switch_to(0);
        }
        for command in joins {
            net.send(command);
        }
        let mut terminal = TerminalGuard::enter()?;
        let result = event_loop(&mut terminal.terminal, &mut app, net).await;
        drop(terminal);
        result
    })
}

/// Connects and logs in. A `wss://` certificate seen for the first time is
/// shown, and on a terminal the user is asked once whether to trust it (and
/// record it); a changed or mismatched one is refused with the full story.
async fn connect(mut net: NetConfig) -> Result<NetClient> {
    let progress = io::stderr().is_terminal();
    loop {
        if progress {
            eprint!("connecting to {} as {}…", net.url, net.user);
        }
        let connected = NetClient::connect(net.clone()).await;
        if progress {
            // Erase the progress line: success leaves nothing, failure one line.
            eprint!("\r\x1b[2K");
        }
        match connected {
            Ok(client) => return Ok(client),
            Err(ConnectError::Certificate(CertificateError::Unknown {
                server,
                fingerprint,
                reason,
            })) if net.trust.pinned.is_none() && io::stdin().is_terminal() => {
                if !confirm(
                    &server,
                    &fingerprint,
                    &reason,
                    net.trust.known_servers.as_deref(),
                )? {
                    bail!("not connecting: the certificate of {server} was not accepted");
                }
                if let Some(file) = &net.trust.known_servers {
                    chat_tui::tls::remember(file, &server, &fingerprint).with_context(|| {
                        format!("cannot record the certificate in {}", file.display())
                    })?;
                }
                // This run trusts exactly what was shown, even if the file
                // could not be read back; the next attempt cannot ask again.
                net.trust.pinned = Some(fingerprint);
            }
            Err(ConnectError::Certificate(err)) => return Err(anyhow!(err.loud())),
            Err(err) => return Err(err.into()),
        }
    }
}

/// Shows a certificate no authority vouches for and asks, on the terminal
/// and before the screen is taken over, whether to trust it. Only `y` or
/// `yes` trusts it.
fn confirm(
    server: &str,
    fingerprint: &Fingerprint,
    reason: &str,
    file: Option<&std::path::Path>,
) -> Result<bool> {
    let remember = match file {
        Some(file) => format!(" and remember it in {}", file.display()),
        None => String::new(),
    };
    let mut err = io::stderr();
    // The reason is rustls's, about a certificate the server chose: shown
    // through the sanitizer like anything else that came from it.
    write!(
        err,
        "The certificate of {server} is not signed by an authority this system trusts\n\
         ({}). Its fingerprint is\n\
         \n    {fingerprint}\n\n\
         Compare it with the one chat-server printed when it started (ask its operator).\n\
         Trust this server{remember}? [y/N] ",
        sanitize(reason, false)
    )?;
    err.flush()?;
    let mut answer = String::new();
    io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

type Term = Terminal<CrosstermBackend<Stdout>>;

/// Raw mode, alternate screen, mouse and bracketed paste while alive;
/// restored on drop and by the panic hook.
struct TerminalGuard {
    terminal: Term,
}

impl TerminalGuard {
    fn enter() -> Result<Self> {
        install_panic_hook();
        enable_raw_mode().context("cannot put the terminal in raw mode")?;
        let mut stdout = io::stdout();
        if let Err(err) = execute!(
            stdout,
            EnterAlternateScreen,
            EnableMouseCapture,
            EnableBracketedPaste,
            EnableFocusChange
        ) {
            restore_terminal();
            return Err(err).context("cannot set up the terminal");
        }
        match Terminal::new(CrosstermBackend::new(stdout)) {
            Ok(terminal) => Ok(TerminalGuard { terminal }),
            Err(err) => {
                restore_terminal();
                Err(err).context("cannot set up the terminal")
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Puts the terminal back as the shell expects it. Safe to call twice.
fn restore_terminal() {
    let mut stdout = io::stdout();
    let _ = execute!(
        stdout,
        DisableBracketedPaste,
        DisableFocusChange,
        DisableMouseCapture,
        LeaveAlternateScreen,
        cursor::Show
    );
    let _ = disable_raw_mode();
    let _ = stdout.flush();
}

fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
}

async fn event_loop(terminal: &mut Term, app: &mut App, mut net: NetClient) -> Result<()> {
    let size = terminal.size().context("cannot read the terminal size")?;
    app.size = (size.width, size.height);
    let mut input = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut signals = Signals::new()?;
    let mut dirty = true;
    loop {
        if dirty {
            app.now = Instant::now();
            terminal
                .draw(|frame| ui::render(app, frame))
                .context("cannot draw")?;
            dirty = false;
        }
        let mut batch = Vec::new();
        tokio::select! {
            event = input.next() => match event {
                Some(Ok(event)) => {
                    batch.extend(terminal_event(event));
                    // Keys already typed (or a paste without bracketed
                    // paste) are applied together, then drawn once.
                    while batch.len() < 1024 {
                        match input.next().now_or_never() {
                            Some(Some(Ok(event))) => batch.extend(terminal_event(event)),
                            _ => break,
                        }
                    }
                }
                Some(Err(err)) => return Err(err).context("cannot read the terminal"),
                None => break,
            },
            event = net.recv() => match event {
                Some(event) => {
                    batch.push(Event::Net(event));
                    // Take everything already waiting: one redraw per batch.
                    while let Some(event) = net.try_recv() {
                        batch.push(Event::Net(event));
                        if batch.len() >= 1024 {
                            break;
                        }
                    }
                }
                None => break,
            },
            _ = tick.tick() => batch.push(Event::Tick),
            _ = signals.next() => break,
        }
        for event in batch {
            app.now = Instant::now();
            match app::update(app, event) {
                None => {}
                Some(Action::Net(command)) => net.send(command),
                Some(Action::Quit) => {
                    net.shutdown().await;
                    return Ok(());
                }
            }
            dirty = true;
        }
        for alert in app.alerts.drain(..) {
            // Straight to the terminal, beside what ratatui draws: the bell
            // and notification sequences move no cursor and draw nothing.
            let mut stdout = io::stdout();
            let _ = stdout.write_all(notify::terminal_bytes(&alert).as_bytes());
            let _ = stdout.flush();
            notify::desktop(&alert);
        }
    }
    net.shutdown().await;
    Ok(())
}

fn terminal_event(event: TermEvent) -> Option<Event> {
    match event {
        TermEvent::Key(key) => Some(Event::Key(key)),
        TermEvent::Mouse(mouse) => Some(Event::Mouse(mouse)),
        TermEvent::Paste(text) => Some(Event::Paste(text)),
        TermEvent::Resize(width, height) => Some(Event::Resize(width, height)),
        TermEvent::FocusGained => Some(Event::Focus(true)),
        TermEvent::FocusLost => Some(Event::Focus(false)),
    }
}

/// SIGTERM and SIGHUP end the client as Ctrl+C does, terminal restored.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
                hup: signal(SignalKind::hangup()).context("cannot watch SIGHUP")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await
    }
}
