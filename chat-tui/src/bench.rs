//! Measures how long one frame takes to render with a room of many loaded
//! messages, without a terminal (ratatui's `TestBackend`). Run it with
//! `chat-tui --bench-render` on a release build, or as the ignored test
//! `render_benchmark`.

use std::time::{Duration, Instant};

use chat_proto::MessageRecord;
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

use crate::app::{update, App, Event, Room};
use crate::clock;
use crate::net::NetEvent;

/// Render times measured by [`measure`].
#[derive(Debug, Clone, Copy)]
pub struct RenderTiming {
    pub messages: usize,
    pub width: u16,
    pub height: u16,
    /// The first frame, which wraps every visible message.
    pub first: Duration,
    /// Mean of redrawing the newest page (heights cached).
    pub steady: Duration,
    /// Mean of PageUp plus a redraw, walking back through the room.
    pub scrolling: Duration,
    /// Frames of each kind measured.
    pub frames: u32,
}

impl std::fmt::Display for RenderTiming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        write!(
            f,
            "render {}x{} with {} messages: first frame {:.3} ms, redraw {:.3} ms/frame, \
             PageUp+redraw {:.3} ms/frame ({} frames each)",
            self.width,
            self.height,
            self.messages,
            ms(self.first),
            ms(self.steady),
            ms(self.scrolling),
            self.frames
        )
    }
}

/// An app holding one room with `messages` varied messages (several users,
/// long lines, CJK and emoji, a few days), as a busy room would.
pub fn sample_app(messages: usize, width: u16, height: u16) -> App {
    let mut app = App::new("alice", "ws://127.0.0.1:8765/ws", clock::utc);
    app.size = (width, height);
    app.rooms.push(Room::new("general"));
    app.rooms[0].joined = true;
    let users = ["alice", "bob", "carol", "dave", "erin", "frank"];
    let texts = [
        "short one",
        "a somewhat longer message that will need to wrap on narrower panes but fits on wide ones",
        "日本語のメッセージも正しく折り返されるべきです。幅の広い文字は二つのセルを使います。",
        "emoji 🦀🎉👍 and words mixed together, with a link https://example.com/some/long/path?x=1",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat.",
        "two\nlines",
    ];
    let start = 1_764_000_000_000i64;
    let records: Vec<MessageRecord> = (0..messages)
        .map(|i| MessageRecord {
            room: "general".into(),
            seq: i as u64 + 1,
            user: users[i % users.len()].into(),
            text: texts[(i * 7) % texts.len()].into(),
            ts: start + i as i64 * 9_000,
            ..Default::default()
        })
        .collect();
    update(
        &mut app,
        Event::Net(NetEvent::Backlog {
            room: "general".into(),
            messages: records,
            has_more: false,
            resumed: false,
        }),
    );
    app
}

/// Renders `frames` frames of each kind and returns the timings.
pub fn measure(messages: usize, width: u16, height: u16, frames: u32) -> RenderTiming {
    let mut app = sample_app(messages, width, height);
    let mut terminal = match Terminal::new(TestBackend::new(width, height)) {
        Ok(terminal) => terminal,
        Err(never) => match never {},
    };
    let mut draw = |app: &App| {
        let started = Instant::now();
        // TestBackend never fails.
        let _ = terminal.draw(|frame| crate::ui::render(app, frame));
        started.elapsed()
    };
    let first = draw(&app);
    let mut steady = Duration::ZERO;
    for _ in 0..frames {
        steady += draw(&app);
    }
    let mut scrolling = Duration::ZERO;
    for _ in 0..frames {
        let started = Instant::now();
        update(
            &mut app,
            Event::Key(KeyEvent::new(KeyCode::PageUp, KeyModifiers::NONE)),
        );
        scrolling += started.elapsed();
        scrolling += draw(&app);
    }
    RenderTiming {
        messages,
        width,
        height,
        first,
        steady: steady / frames.max(1),
        scrolling: scrolling / frames.max(1),
        frames,
    }
}

#[cfg(test)]
mod tests {
    /// The render-time figure: `cargo test -p chat-tui --release --lib --
    /// --ignored --nocapture render_benchmark`.
    #[test]
    #[ignore = "benchmark; run in release with --ignored --nocapture"]
    fn render_benchmark() {
        let timing = super::measure(100_000, 200, 60, 500);
        println!("{timing}");
    }

    #[test]
    fn measure_runs() {
        let timing = super::measure(500, 80, 24, 3);
        assert_eq!(timing.messages, 500);
    }
}
