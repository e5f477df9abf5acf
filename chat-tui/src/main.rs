//! The `chat-tui` binary: reads the command line, the environment and the
//! config file, logs in before touching the terminal (so a wrong password or
//! an unreachable server is one line on a clean terminal), then runs the
//! event loop: terminal input, network events and a clock tick feed
//! `app::update`, and the screen is redrawn after each batch. The terminal is
//! restored on every way out: quit, error, signal and panic.

use std::io::{self, IsTerminal, Stdout, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use chat_tui::app::{self, Action, App, Event};
use chat_tui::net::{NetClient, NetConfig};
use chat_tui::{bench, clock, config, ui};
use clap::Parser;
use crossterm::event::{
    DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture,
    Event as TermEvent, EventStream,
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
/// Connects to SERVER (e.g. `192.168.1.23`, `host:8765` or
/// `ws://host:8765/ws`) as --user. The password comes from CHAT_PASSWORD or
/// is asked for without echo. Defaults can live in
/// ~/.config/chat-tui/config.toml (server, user, rooms). Press F1 in the
/// client for keys and commands.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Server address: HOST, HOST:PORT or ws://HOST:PORT/ws (default port
    /// 8765, default path /ws).
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
            // One line: the chain of causes joined, no backtrace.
            eprintln!("chat-tui: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Everything needed to start, from flags, environment and config file.
struct Start {
    net: NetConfig,
    rooms: Vec<String>,
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
    Ok(Start { net, rooms })
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
        let progress = io::stderr().is_terminal();
        if progress {
            eprint!("connecting to {url} as {user}…");
        }
        let connected = NetClient::connect(start.net).await;
        if progress {
            // Erase the progress line: success leaves nothing, failure one line.
            eprint!("\r\x1b[2K");
        }
        let net = connected?;
        let mut app = App::new(user, url, clock::local);
        app.admin = net.session.admin;
        let mut joins = Vec::new();
        for room in &start.rooms {
            if let Some(Action::Net(command)) = app.join(room) {
                joins.push(command);
            }
        }
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
            EnableBracketedPaste
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
        TermEvent::FocusGained | TermEvent::FocusLost => None,
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
