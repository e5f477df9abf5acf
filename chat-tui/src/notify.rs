//! Notifications: whether a message is worth interrupting the user for
//! ([`should_alert`], a pure decision), and how the interruption is made
//! ([`terminal_bytes`] for the terminal, [`desktop`] through `notify-send`).
//!
//! Alerted: a mention of the user's name, or (at the default level) any
//! message in a direct conversation, when the room is not in view or the
//! terminal does not have focus. Never the user's own messages, nor the
//! backlog replayed at a (re)join, nor a muted room.
//!
//! Every string here came from other users: it is sanitized by the caller
//! (`sanitize_line`, no control character left), and [`terminal_bytes`]
//! also drops the `;` that separates OSC fields, so a name or a message
//! cannot end the sequence early or add fields to it.

use std::process::{Command, Stdio};

use serde::Deserialize;

/// How much the client interrupts the user (`notify` in `config.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// Never.
    Off,
    /// Mentions of the user's name.
    Mentions,
    /// Mentions, and every message of a direct conversation.
    #[default]
    MentionsAndDms,
}

/// What is known about a message when it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arrival {
    /// Written by this user (from this or another device).
    pub own: bool,
    /// Mentions the user's name.
    pub mention: bool,
    /// In a direct conversation.
    pub dm: bool,
    /// Part of a backlog (a join, or a resume after a reconnect), not live.
    pub backlog: bool,
    /// Its room is the one shown, followed to the newest line, in a
    /// terminal that has focus: the user sees it arrive.
    pub in_view: bool,
    /// The user muted its room (`/mute`).
    pub muted: bool,
}

/// Whether `arrival` interrupts the user at `level`.
pub fn should_alert(level: Level, arrival: Arrival) -> bool {
    if arrival.own || arrival.backlog || arrival.in_view || arrival.muted {
        return false;
    }
    match level {
        Level::Off => false,
        Level::Mentions => arrival.mention,
        Level::MentionsAndDms => arrival.mention || arrival.dm,
    }
}

/// One interruption: where, from whom, and the start of the message, all
/// already sanitized for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The room as the room list names it (`general`, `@bob`, `*ops`).
    pub room: String,
    pub user: String,
    pub text: String,
}

/// Longest message text put in a notification, in characters.
const PREVIEW_CHARS: usize = 120;

impl Alert {
    /// The notification's title and body.
    fn title_and_body(&self) -> (String, String) {
        let title = format!("{} in {}", self.user, self.room);
        let mut body: String = self.text.chars().take(PREVIEW_CHARS).collect();
        if self.text.chars().count() > PREVIEW_CHARS {
            body.push('…');
        }
        (title, body)
    }
}

/// What the terminal is sent for `alert`: the bell, then a desktop
/// notification as OSC 777 (`notify;TITLE;BODY`: urxvt, VTE terminals,
/// foot, WezTerm) and OSC 9 (iTerm2, kitty, Windows Terminal). A terminal
/// that knows neither ignores them.
pub fn terminal_bytes(alert: &Alert) -> String {
    let (title, body) = alert.title_and_body();
    let field = |text: &str| -> String {
        text.chars()
            .filter(|c| *c != ';' && !c.is_control())
            .collect()
    };
    let (title, body) = (field(&title), field(&body));
    format!("\x07\x1b]777;notify;{title};{body}\x07\x1b]9;{title}: {body}\x07")
}

/// Shows `alert` with `notify-send` when the terminal is not one known to
/// show OSC 777 or OSC 9 notifications, a desktop session is there and
/// `notify-send` is installed. Returns whether it was started. Never waits
/// for it, and ignores its failures (the bell already rang).
pub fn desktop(alert: &Alert) -> bool {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let desktop_session = env("DISPLAY").is_some() || env("WAYLAND_DISPLAY").is_some();
    if !desktop_session || terminal_shows_osc_notifications(env) {
        return false;
    }
    let (title, body) = alert.title_and_body();
    Command::new("notify-send")
        .args(["--app-name=chat-tui", "--", &title, &body])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(|mut child| {
            // Reaped off the event loop; it exits at once.
            std::thread::spawn(move || child.wait());
        })
        .is_ok()
}

/// Terminals that show OSC 777 or OSC 9 themselves, by what they put in the
/// environment.
fn terminal_shows_osc_notifications(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    let program = env("TERM_PROGRAM").and_then(|p| p.into_string().ok());
    let term = env("TERM")
        .and_then(|t| t.into_string().ok())
        .unwrap_or_default();
    env("VTE_VERSION").is_some()
        || env("KITTY_WINDOW_ID").is_some()
        || env("WT_SESSION").is_some()
        || matches!(program.as_deref(), Some("iTerm.app" | "WezTerm"))
        || term.starts_with("foot")
        || term.contains("kitty")
        || term.starts_with("rxvt")
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Arrival = Arrival {
        own: false,
        mention: false,
        dm: false,
        backlog: false,
        in_view: false,
        muted: false,
    };

    #[test]
    fn what_interrupts_the_user() {
        use Level::*;
        let mention = Arrival {
            mention: true,
            ..QUIET
        };
        let dm = Arrival { dm: true, ..QUIET };
        // (level, arrival, alerted)
        let table = [
            (MentionsAndDms, QUIET, false),
            (MentionsAndDms, mention, true),
            (MentionsAndDms, dm, true),
            (Mentions, mention, true),
            (Mentions, dm, false),
            (Off, mention, false),
            (Off, dm, false),
            // Never one's own, nor backlog, nor what is in view, nor muted.
            (
                MentionsAndDms,
                Arrival {
                    own: true,
                    ..mention
                },
                false,
            ),
            (MentionsAndDms, Arrival { own: true, ..dm }, false),
            (
                MentionsAndDms,
                Arrival {
                    backlog: true,
                    ..mention
                },
                false,
            ),
            (
                MentionsAndDms,
                Arrival {
                    backlog: true,
                    ..dm
                },
                false,
            ),
            (
                MentionsAndDms,
                Arrival {
                    in_view: true,
                    ..mention
                },
                false,
            ),
            (
                MentionsAndDms,
                Arrival {
                    muted: true,
                    ..mention
                },
                false,
            ),
            (MentionsAndDms, Arrival { muted: true, ..dm }, false),
        ];
        for (level, arrival, alerted) in table {
            assert_eq!(
                should_alert(level, arrival),
                alerted,
                "{level:?} {arrival:?}"
            );
        }
    }

    #[test]
    fn the_terminal_gets_the_bell_and_two_notification_sequences() {
        let alert = Alert {
            room: "@bob".into(),
            user: "bob".into(),
            text: "lunch?".into(),
        };
        assert_eq!(
            terminal_bytes(&alert),
            "\x07\x1b]777;notify;bob in @bob;lunch?\x07\x1b]9;bob in @bob: lunch?\x07"
        );
    }

    #[test]
    fn peer_text_cannot_break_out_of_the_sequence() {
        let alert = Alert {
            room: "general".into(),
            user: "bob".into(),
            // Sanitized text has no control characters; a `;` would still
            // add a field, and anything unsanitized is filtered here too.
            text: "a;b\x07\x1b]52;c;aGk=\x07".into(),
        };
        let bytes = terminal_bytes(&alert);
        let body = bytes
            .strip_prefix("\x07\x1b]777;notify;bob in general;")
            .unwrap();
        let (body, _) = body.split_once('\x07').unwrap();
        assert_eq!(body, "ab]52caGk=");
        // Only the two sequences' own ESCs: no third sequence was started.
        assert_eq!(bytes.matches('\x1b').count(), 2);
    }

    #[test]
    fn long_messages_are_cut() {
        let alert = Alert {
            room: "general".into(),
            user: "bob".into(),
            text: "x".repeat(500),
        };
        let (_, body) = alert.title_and_body();
        assert_eq!(body.chars().count(), PREVIEW_CHARS + 1);
        assert!(body.ends_with('…'));
    }

    #[test]
    fn terminals_that_show_notifications_are_recognised() {
        let only = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert!(terminal_shows_osc_notifications(only(&[(
            "VTE_VERSION",
            "7600"
        )])));
        assert!(terminal_shows_osc_notifications(only(&[(
            "TERM",
            "xterm-kitty"
        )])));
        assert!(terminal_shows_osc_notifications(only(&[(
            "TERM_PROGRAM",
            "WezTerm"
        )])));
        assert!(!terminal_shows_osc_notifications(only(&[(
            "TERM",
            "xterm-256color"
        )])));
        assert!(!terminal_shows_osc_notifications(only(&[])));
    }
}
