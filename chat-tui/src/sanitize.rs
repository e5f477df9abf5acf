//! Makes text from other users safe to print. The server refuses control
//! characters, but the client does not trust the server (or whatever is
//! listening at the URL it was given): anything that could move the cursor,
//! start an escape sequence, reorder the line, hide text or draw outside
//! its own cells is made visible or dropped before it reaches the screen.
//!
//! One pass over the text, one rule per kind of character:
//!
//! - controls (C0, DEL, C1) become visible pictures, so an escape sequence
//!   is shown, not obeyed;
//! - line and paragraph separators (U+2028, U+2029) are line breaks, like
//!   `\n`;
//! - invisible characters (Unicode's *default ignorable* set: zero-width
//!   spaces and joiners, bidi marks, embeddings, overrides and isolates,
//!   tags, variation selectors, fillers) are dropped, so they can neither
//!   hide text nor split a name the mention check looks for. The few that
//!   carry meaning are kept where they do: a joiner between two visible
//!   non-ASCII characters (emoji sequences, Indic and Persian shaping), a
//!   variation selector after a non-ASCII character or in a keycap, the
//!   tags of the three subdivision flags;
//! - combining marks are capped at [`MAX_MARKS`] per base character, and
//!   emoji joined into one picture at [`MAX_JOINS`] joiners, because the
//!   terminal draws a whole grapheme into the one cell ratatui gives it and
//!   a flood of marks or joined pictures would paint over the neighbours.
//!
//! What is left is text whose width, as [`crate::wrap`] measures it with
//! ratatui's own cell widths, is the width a terminal draws it at. The one
//! gap is a joined emoji the terminal does not know, drawn as its separate
//! pictures: [`MAX_JOINS`] bounds it.

use ratatui::buffer::CellWidth;

/// Columns a tab expands to. Tabs are expanded here so that width
/// computations never meet a control character.
const TAB: &str = "    ";

/// Combining marks kept on one base character. Three covers real text
/// (Vietnamese stacks two, pointed Hebrew and Tibetan stacks three) while a
/// "zalgo" flood of dozens is cut before it can reach the lines around it.
pub const MAX_MARKS: usize = 3;

/// Zero-width joiners kept in one run of joined emoji. The longest standard
/// sequences (families, a kiss with skin tones) join four pictures with
/// three. A terminal that does not know a sequence draws every picture of
/// it, so the cap also bounds how far past its two cells a sequence can
/// reach there.
pub const MAX_JOINS: usize = 3;

const ZWJ: char = '\u{200d}';
const ZWNJ: char = '\u{200c}';
const KEYCAP: char = '\u{20e3}';
const BLACK_FLAG: char = '\u{1f3f4}';

/// The tag sequences that follow U+1F3F4 in the only standard flags built
/// from tags: England, Scotland, Wales. Every other tag is hidden text.
const TAG_FLAGS: [&str; 3] = [
    "\u{e0067}\u{e0062}\u{e0065}\u{e006e}\u{e0067}\u{e007f}",
    "\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f}",
    "\u{e0067}\u{e0062}\u{e0077}\u{e006c}\u{e0073}\u{e007f}",
];

/// Returns `text` safe to draw: C0 controls as their Unicode control
/// pictures (ESC becomes `␛`), DEL as `␡`, C1 controls as `�`, invisible
/// characters dropped, combining marks and joined emoji capped (see the
/// module header). Line breaks (`\n`, `\r\n`, `\r`, U+2028, U+2029) are
/// kept as `\n` when `keep_newlines` is true (message bodies), shown as `␤`
/// otherwise (names, one-line fields). Tabs become spaces.
pub fn sanitize(text: &str, keep_newlines: bool) -> String {
    // Printable ASCII needs nothing, and most messages are just that.
    if text.bytes().all(|b| matches!(b, b' '..=b'~')) {
        return text.to_owned();
    }
    let mut out = Out::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        let next = chars.clone().next();
        match c {
            '\n' | '\u{2028}' | '\u{2029}' if keep_newlines => out.line_break(),
            '\r' if keep_newlines => {
                // \r\n and a lone \r both mean a line break, as the server stores them.
                if next == Some('\n') {
                    chars.next();
                }
                out.line_break();
            }
            '\n' | '\u{2028}' | '\u{2029}' => out.base('\u{2424}'),
            '\t' => TAB.chars().for_each(|c| out.base(c)),
            '\u{00}'..='\u{1f}' => {
                out.base(char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'));
            }
            '\u{7f}' => out.base('\u{2421}'),
            '\u{80}'..='\u{9f}' => out.base('\u{fffd}'),
            BLACK_FLAG => {
                out.base(c);
                let rest = chars.as_str();
                if let Some(tags) = TAG_FLAGS.iter().find(|tags| rest.starts_with(**tags)) {
                    // Pushed whole and uncounted: six tags, all of them meant.
                    out.text.push_str(tags);
                    chars = rest[tags.len()..].chars();
                }
            }
            ZWJ | ZWNJ => {
                // Outside a run of non-ASCII characters a joiner joins
                // nothing visible; inside an ASCII word it would only split
                // a name from the mention check. Nor does one joined to an
                // invisible character (no standard sequence has one), which
                // would be dropped and leave the joiner beside ASCII.
                let joins = out.prev.is_some_and(joinable)
                    && next.is_some_and(|n| joinable(n) && !is_default_ignorable(n));
                // Between emoji a joiner makes one grapheme of the run, drawn
                // in two cells only when every picture in it is a two-cell
                // one: a symbol or unassigned emoji code point joined in
                // made one grapheme as wide as its parts. Found by fuzzing.
                let after = chars.clone().nth(1);
                let joins = joins
                    && match next {
                        Some(n) if is_pictographic(n) => {
                            out.picture_end && is_wide_picture(n, after)
                        }
                        _ => true,
                    };
                if joins && (c == ZWNJ || out.joins < MAX_JOINS) {
                    let kept = out.mark(c);
                    if kept && c == ZWJ {
                        out.joins += 1;
                    }
                }
            }
            '\u{fe00}'..='\u{fe0f}' | '\u{e0100}'..='\u{e01ef}' => {
                // A variation selector picks the emoji or text form of a
                // symbol, or a variant of an ideograph; after ASCII it only
                // means something in a keycap (1️⃣ is 1, U+FE0F, U+20E3).
                let keycap = out.prev.is_some_and(|p| matches!(p, '0'..='9' | '#' | '*'))
                    && next == Some(KEYCAP);
                if out.prev.is_some_and(joinable) || keycap {
                    out.mark(c);
                }
            }
            c if is_default_ignorable(c) => {}
            c if is_zero_width(c) => {
                out.mark(c);
            }
            c => out.base(c),
        }
    }
    out.text
}

/// Sanitizes a one-line field such as a user or room name.
pub fn sanitize_line(text: &str) -> String {
    sanitize(text, false)
}

/// The text being built, with what the caps need to know about its end.
struct Out {
    text: String,
    /// The last character kept; `None` at the start.
    prev: Option<char>,
    /// Zero-width characters kept since the last character with a width.
    marks: usize,
    /// Joiners kept in the current run of joined emoji.
    joins: usize,
    /// Whether the text ends in a two-cell emoji (a picture, with its skin
    /// tone or presentation selector), which a joiner may extend.
    picture_end: bool,
}

impl Out {
    fn with_capacity(capacity: usize) -> Self {
        Out {
            text: String::with_capacity(capacity),
            prev: None,
            marks: 0,
            joins: 0,
            picture_end: false,
        }
    }

    /// A character that takes cells of its own.
    fn base(&mut self, c: char) {
        // A skin tone extends the picture before it into one grapheme of
        // two cells; after anything else (a letter, another skin tone) it
        // would make a grapheme wider than the cells it is given, and draw
        // over its neighbours. Found by fuzzing.
        if is_emoji_modifier(c) && !self.prev.is_some_and(is_picture) {
            return;
        }
        // Leading Hangul jamo join each other into one grapheme two columns
        // a letter: a run of them is one unsplittable grapheme as wide as a
        // peer likes. A syllable has one leading letter. Found by fuzzing.
        if is_leading_jamo(c) && self.prev.is_some_and(is_leading_jamo) {
            return;
        }
        // A picture after a joiner (or a skin tone after a picture) extends
        // the run; anything else starts a new one.
        if self.prev != Some(ZWJ) && !is_emoji_modifier(c) {
            self.joins = 0;
        }
        self.marks = 0;
        // A skin tone was let through only after a picture, which it keeps
        // a picture.
        self.picture_end = is_picture(c) || (is_emoji_modifier(c) && self.picture_end);
        self.push(c);
    }

    fn line_break(&mut self) {
        self.marks = 0;
        self.joins = 0;
        self.picture_end = false;
        self.push('\n');
    }

    /// A zero-width character that draws on the base before it: kept while
    /// that base has fewer than [`MAX_MARKS`]. Without a base (at the start
    /// or after a line break) it is dropped, since it would combine with
    /// whatever the caller draws before this text. Returns whether it was
    /// kept.
    fn mark(&mut self, c: char) -> bool {
        if self.marks >= MAX_MARKS || matches!(self.prev, None | Some('\n')) {
            return false;
        }
        self.marks += 1;
        // U+FE0F asks for the two-cell emoji form of the symbol before it.
        self.picture_end = c == '\u{fe0f}' && self.prev.is_some_and(is_pictographic);
        self.push(c);
        true
    }

    fn push(&mut self, c: char) {
        self.text.push(c);
        self.prev = Some(c);
    }
}

/// Characters a joiner or variation selector may sit next to: anything but
/// ASCII (whose words are where names live) and spaces.
fn joinable(c: char) -> bool {
    !c.is_ascii() && !c.is_whitespace()
}

/// An emoji picture a skin tone may follow: one of the pictographic blocks
/// (an approximation of Extended_Pictographic wide enough for every emoji
/// that takes a skin tone) drawn two cells wide, so that picture and tone
/// together take exactly its two cells. Skin tones themselves excepted.
fn is_picture(c: char) -> bool {
    matches!(c, '\u{2600}'..='\u{27bf}' | '\u{1f000}'..='\u{1faff}')
        && !is_emoji_modifier(c)
        && crate::wrap::width(c.encode_utf8(&mut [0; 4])) == 2
}

/// Characters that emoji joiners join into one grapheme (a superset of
/// Unicode's Extended_Pictographic: the symbol blocks, and every code point
/// from U+1F000 on, which Unicode reserves for emoji, assigned or not).
fn is_pictographic(c: char) -> bool {
    matches!(
        c,
        '\u{a9}'
            | '\u{ae}'
            | '\u{2000}'..='\u{2bff}'
            | '\u{3030}'
            | '\u{303d}'
            | '\u{3297}'
            | '\u{3299}'
            | '\u{1f000}'..='\u{1fffd}'
    )
}

/// Whether `c` (followed by `after`) is drawn as a two-cell emoji: a wide
/// picture, or a symbol asked for in its emoji form with U+FE0F.
fn is_wide_picture(c: char, after: Option<char>) -> bool {
    is_picture(c) || (is_pictographic(c) && after == Some('\u{fe0f}'))
}

/// Hangul leading consonants (choseong), which join what follows them.
fn is_leading_jamo(c: char) -> bool {
    matches!(c, '\u{1100}'..='\u{115f}' | '\u{a960}'..='\u{a97c}')
}

/// The skin tone modifiers, which extend the emoji before them.
fn is_emoji_modifier(c: char) -> bool {
    matches!(c, '\u{1f3fb}'..='\u{1f3ff}')
}

/// Unicode's Default_Ignorable_Code_Point property (DerivedCoreProperties):
/// characters a renderer is to show as nothing. Among them the zero-width
/// space, joiners and word joiner, the bidi marks (LRM, RLM, ALM), the bidi
/// embeddings, overrides and isolates (the "Trojan source" set), the byte
/// order mark, soft hyphen, Hangul fillers, variation selectors and tags.
fn is_default_ignorable(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{34f}'
            | '\u{61c}'
            | '\u{115f}'..='\u{1160}'
            | '\u{17b4}'..='\u{17b5}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff0}'..='\u{fff8}'
            | '\u{1bca0}'..='\u{1bca3}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e0fff}'
    )
}

/// True for characters drawn on the cell of the character before them
/// (combining marks, Hangul vowel and final jamo, ...), by the same width
/// rules ratatui draws with.
fn is_zero_width(c: char) -> bool {
    // Below U+0300 only the soft hyphen has no width, and it is dropped as
    // default ignorable before this is asked.
    if c < '\u{300}' {
        return false;
    }
    let mut buf = [0; 4];
    c.encode_utf8(&mut buf).cell_width() == 0
}

#[cfg(test)]
mod skin_tone_tests {
    use super::*;

    #[test]
    fn skin_tones_only_follow_a_picture_once() {
        // Found by fuzzing: one grapheme 21 columns wide.
        assert_eq!(sanitize("a🏽🏽🏽🏽🏽🏽🏽🏽🏽🏽", true), "a");
        assert_eq!(sanitize("\u{fffd}🏽", true), "\u{fffd}");
        // A waving hand with a skin tone stays, once.
        assert_eq!(sanitize("👋🏽🏽🏽 hi", true), "👋🏽 hi");
        assert_eq!(sanitize("✋🏿", true), "✋🏿");
        // A picture drawn one cell wide would make three with the tone.
        assert_eq!(sanitize("⛥🏽", true), "⛥");
    }

    #[test]
    fn joiners_join_only_two_cell_pictures() {
        // Found by fuzzing: an unassigned emoji code point (one cell) joined
        // between pictures made one grapheme five columns wide.
        assert_eq!(
            sanitize("👨\u{200d}\u{1fc69}\u{200d}👧", true),
            "👨\u{1fc69}👧"
        );
        assert_eq!(sanitize("👨\u{200d}©", true), "👨©");
        // Standard sequences keep every joiner, symbols in emoji form too.
        for seq in [
            "👨\u{200d}👩\u{200d}👧",
            "👩🏻\u{200d}❤\u{fe0f}\u{200d}💋\u{200d}👨🏼",
            "🏳\u{fe0f}\u{200d}🌈",
        ] {
            assert_eq!(sanitize(seq, true), seq);
        }
        // Joiners outside emoji (Indic conjuncts) are left as they were.
        assert_eq!(sanitize("क्\u{200d}ष", true), "क्\u{200d}ष");
    }

    #[test]
    fn a_run_of_leading_jamo_keeps_one() {
        // Found by fuzzing: one grapheme two columns a letter.
        assert_eq!(
            sanitize("\u{1100}\u{1100}\u{1100}\u{1169}", true),
            "\u{1100}\u{1169}"
        );
        // A syllable spelled out (L V T) stays whole.
        assert_eq!(
            sanitize("\u{1100}\u{1161}\u{11a8}", true),
            "\u{1100}\u{1161}\u{11a8}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::mentions;
    use crate::wrap;

    /// Longest run of zero-width characters after one base in `text`.
    fn most_marks(text: &str) -> usize {
        let mut run = 0;
        let mut most = 0;
        for c in text.chars() {
            run = if is_zero_width(c) { run + 1 } else { 0 };
            most = most.max(run);
        }
        most
    }

    #[test]
    fn plain_text_is_unchanged() {
        assert_eq!(sanitize("héllo 世界 🦀", true), "héllo 世界 🦀");
        assert_eq!(sanitize("a\nb", true), "a\nb");
    }

    #[test]
    fn text_that_needs_its_invisibles_keeps_them() {
        for text in [
            // Vietnamese, decomposed: a base and two marks.
            "Tie\u{323}\u{302}ng Vie\u{323}\u{302}t",
            // Thai: a consonant, a vowel and a tone mark.
            "ที่นี่",
            // Pointed Hebrew: shin, dagesh, qamats, shin dot.
            "\u{5e9}\u{5bc}\u{5b8}\u{5c1}",
            // Persian: the non-joiner keeps می and خواهم apart.
            "می\u{200c}خواهم",
            // Emoji: a family (joiners), a waving hand with a skin tone, a
            // red heart (emoji form), a keycap, the flag of Scotland (tags).
            "👨\u{200d}👩\u{200d}👧 👋🏽 ❤\u{fe0f} 1\u{fe0f}\u{20e3} 🏴\u{e0067}\u{e0062}\u{e0073}\u{e0063}\u{e0074}\u{e007f}",
            // A kiss with skin tones: four pictures, three joiners.
            "👩🏻\u{200d}❤\u{fe0f}\u{200d}💋\u{200d}👨🏼",
        ] {
            assert_eq!(sanitize(text, true), text);
        }
    }

    #[test]
    fn escape_sequences_are_made_visible() {
        assert_eq!(sanitize("\u{1b}[2Jhi", true), "\u{241b}[2Jhi");
        assert_eq!(sanitize("\u{1b}]0;title\u{7}", true), "␛]0;title␇");
        assert_eq!(sanitize("a\u{9b}31mb", true), "a\u{fffd}31mb");
        assert_eq!(sanitize("x\u{7f}", true), "x␡");
        assert_eq!(sanitize("\u{0}", true), "␀");
    }

    #[test]
    fn newlines_tabs_and_carriage_returns() {
        assert_eq!(sanitize("a\r\nb\rc", true), "a\nb\nc");
        assert_eq!(sanitize("a\tb", true), "a    b");
        assert_eq!(sanitize_line("a\nb"), "a␤b");
        assert_eq!(sanitize_line("a\rb"), "a␍b");
    }

    #[test]
    fn line_and_paragraph_separators_break_like_newlines() {
        assert_eq!(sanitize("a\u{2028}b\u{2029}c", true), "a\nb\nc");
        assert_eq!(sanitize_line("a\u{2028}b\u{2029}c"), "a␤b␤c");
    }

    #[test]
    fn zero_width_and_invisible_characters_are_dropped() {
        let invisible = [
            '\u{200b}',
            '\u{200c}',
            '\u{200d}',
            '\u{200e}',
            '\u{200f}',
            '\u{2060}',
            '\u{2061}',
            '\u{2062}',
            '\u{2063}',
            '\u{2064}',
            '\u{feff}',
            '\u{61c}',
            '\u{ad}',
            '\u{34f}',
            '\u{3164}',
            '\u{ffa0}',
            '\u{115f}',
            '\u{180e}',
            '\u{fe0f}',
            '\u{e0100}',
        ];
        for c in invisible {
            assert_eq!(
                sanitize(&format!("al{c}ice"), true),
                "alice",
                "U+{:04X}",
                c as u32
            );
            assert_eq!(
                sanitize_line(&format!("{c}bob{c}")),
                "bob",
                "U+{:04X}",
                c as u32
            );
        }
        // Between non-ASCII characters the joiners stay, but never beside
        // ASCII, even with other invisibles in between.
        assert_eq!(sanitize("é\u{200d}\u{200b}alice", true), "éalice");
    }

    #[test]
    fn bidi_marks_embeddings_overrides_and_isolates_are_dropped() {
        let bidi: String = ('\u{202a}'..='\u{202e}')
            .chain('\u{2066}'..='\u{2069}')
            .chain(['\u{200e}', '\u{200f}', '\u{61c}'])
            .collect();
        for c in bidi.chars() {
            assert_eq!(sanitize(&format!("abc{c}def"), true), "abcdef");
        }
        assert_eq!(sanitize(&format!("x{bidi}y"), true), "xy");
    }

    #[test]
    fn tag_characters_cannot_hide_text() {
        // "secret" spelled in tags after a visible "ok": invisible on screen.
        let hidden: String = "secret"
            .chars()
            .map(|c| char::from_u32(0xe0000 + c as u32).unwrap())
            .collect();
        assert_eq!(sanitize(&format!("ok{hidden}"), true), "ok");
        assert_eq!(sanitize("a\u{e0001}\u{e007f}b", true), "ab");
        // A black flag followed by anything but the three standard tag
        // sequences is a black flag.
        assert_eq!(sanitize(&format!("🏴{hidden}\u{e007f}"), true), "🏴");
    }

    #[test]
    fn combining_floods_are_capped_per_base() {
        let flood = "\u{301}".repeat(200);
        let out = sanitize(&format!("a{flood}b{flood}"), true);
        assert_eq!(out, format!("a{0}b{0}", "\u{301}".repeat(MAX_MARKS)));
        assert_eq!(wrap::width(&out), 2);
        // Every base gets its own allowance; a base between resets it.
        let out = sanitize(&"e\u{300}\u{301}\u{302}\u{303}\u{304}".repeat(50), true);
        assert_eq!(out, "e\u{300}\u{301}\u{302}".repeat(50));
        // Marks with nothing to sit on would combine with whatever is drawn
        // before the text (the ": " after a name): dropped.
        assert_eq!(sanitize("\u{301}\u{301}x\n\u{301}y", true), "x\ny");
        // Hangul vowel jamo and enclosing marks are zero-width too.
        assert_eq!(
            most_marks(&sanitize(&format!("가{}", "\u{1161}".repeat(99)), true)),
            3
        );
        assert_eq!(
            most_marks(&sanitize(&format!("a{}", "\u{20dd}".repeat(99)), true)),
            3
        );
    }

    #[test]
    fn joined_emoji_runs_are_capped() {
        let man = "👨";
        let ten = [man; 10].join("\u{200d}");
        let out = sanitize(&ten, true);
        let four = [man; 4].join("\u{200d}");
        assert_eq!(out, format!("{four}{four}{man}\u{200d}{man}"));
        // Three pictures on screen, each as wide as ratatui will draw it.
        assert_eq!(wrap::graphemes(&out).len(), 3);
        assert_eq!(wrap::width(&out), 6);
        // Skin tones do not start a new run.
        let toned = ["👨🏻"; 10].join("\u{200d}");
        assert_eq!(
            sanitize(&toned, true).matches('\u{200d}').count(),
            2 * MAX_JOINS + 1
        );
    }

    #[test]
    fn huge_floods_are_cut_in_one_pass() {
        // A hostile server is not bound by the 4 KB limit on text. Half a
        // million joiners after one letter, then as many marks: one pass,
        // and one letter's worth of each kept.
        let flood = format!(
            "é{}x{}",
            "\u{200d}".repeat(500_000),
            "\u{301}".repeat(500_000)
        );
        assert_eq!(sanitize(&flood, true), "éx\u{301}\u{301}\u{301}");
    }

    #[test]
    fn mentions_are_found_through_invisible_characters() {
        for hidden in [
            "al\u{200b}ice",
            "@al\u{200d}ice:",
            "a\u{2060}l\u{feff}i\u{ad}ce",
            "al\u{202e}ice\u{202c}",
            "al\u{2066}ice",
            "ali\u{e0041}ce",
            "al\u{fe0f}ice",
        ] {
            assert!(!mentions(hidden, "alice"), "raw {hidden:?}");
            assert!(mentions(&sanitize(hidden, true), "alice"), "{hidden:?}");
        }
        assert!(!mentions(&sanitize("mal\u{200b}ice", true), "alice"));
    }

    #[test]
    fn output_never_holds_a_control_or_invisible_character() {
        let all: String = (0u32..0x3000)
            .chain(0xfe00..0x10000)
            .chain(0xe0000..0xe0200)
            .filter_map(char::from_u32)
            .collect();
        for keep_newlines in [true, false] {
            let out = sanitize(&all, keep_newlines);
            let mut prev = None;
            for c in out.chars() {
                let code = c as u32;
                assert!(
                    c == '\n' && keep_newlines || !c.is_control(),
                    "U+{code:04X}"
                );
                assert!(!matches!(c, '\u{2028}' | '\u{2029}'));
                if is_default_ignorable(c) {
                    // Only the meaningful ones, and never right after ASCII
                    // (there is no keycap in this text).
                    assert!(
                        matches!(c, ZWJ | ZWNJ | '\u{fe00}'..='\u{fe0f}' | '\u{e0100}'..='\u{e01ef}'),
                        "U+{code:04X}"
                    );
                    assert!(prev.is_some_and(|p: char| !p.is_ascii()), "U+{code:04X}");
                }
                prev = Some(c);
            }
            assert!(most_marks(&out) <= MAX_MARKS);
        }
    }

    /// A hostile peer in every field the screen shows (message text, user,
    /// typing and presence names, an error in the status line), drawn on
    /// ratatui's TestBackend: nothing it sends lands outside its own cells
    /// or lines, and the mention hidden behind a zero-width space counts.
    mod on_screen {
        use super::*;
        use crate::app::{update, App, Event, Room};
        use crate::clock;
        use crate::net::NetEvent;
        use chat_proto::{MessageRecord, PresenceState};
        use ratatui::backend::TestBackend;
        use ratatui::buffer::Buffer;
        use ratatui::style::Color;
        use ratatui::Terminal;

        /// Tuesday 25 November 2025 14:13:20 UTC.
        const BASE_TS: i64 = 1_764_080_000_000;

        fn msg(seq: u64, user: &str, text: &str) -> MessageRecord {
            MessageRecord {
                room: "general".into(),
                seq,
                user: user.into(),
                text: text.into(),
                ts: BASE_TS + seq as i64 * 60_000,
                ..Default::default()
            }
        }

        fn hostile_app() -> App {
            let mut app = App::new("alice", "ws://192.168.1.23:8765/ws", clock::utc);
            app.size = (48, 12);
            app.rooms.push(Room::new("general"));
            app.switch_to(0);
            let zalgo = "\u{301}\u{316}\u{34d}".repeat(70);
            let tags: String = " run rm -rf ~"
                .chars()
                .map(|c| char::from_u32(0xe0000 + c as u32).unwrap_or('?'))
                .collect();
            let men = ["👨"; 10].join("\u{200d}");
            let events = [
                NetEvent::Joined {
                    room: "general".into(),
                    last_seq: 3,
                    members: vec!["alice".into(), "bob".into()],
                },
                NetEvent::Backlog {
                    room: "general".into(),
                    messages: vec![
                        msg(1, "bob", "above"),
                        msg(
                            2,
                            &format!("mal{zalgo}lory\u{2028}"),
                            &format!("z{zalgo}al\u{200b}ice{tags}\u{202e}!\u{2028}{men}"),
                        ),
                        msg(3, "bob", "below"),
                    ],
                    has_more: false,
                    resumed: false,
                },
                NetEvent::Presence {
                    room: "general".into(),
                    user: "eve\u{202e}\u{2066}".into(),
                    state: PresenceState::Joined,
                },
                NetEvent::Typing {
                    room: "general".into(),
                    user: format!("m{zalgo}\u{200b}\u{9b}2J"),
                },
                NetEvent::Error {
                    code: None,
                    message: "\u{1b}]52;c;cHduZWQ=\u{7}\u{2029}boom".into(),
                },
            ];
            for event in events {
                update(&mut app, Event::Net(event));
            }
            app
        }

        fn draw(app: &App) -> Buffer {
            let backend = TestBackend::new(app.size.0, app.size.1);
            let mut terminal = Terminal::new(backend).expect("a test backend");
            terminal
                .draw(|frame| crate::ui::render(app, frame))
                .expect("a test backend draws");
            terminal.backend().buffer().clone()
        }

        /// The screen as text, one string per row, trailing spaces cut.
        fn rows(buffer: &Buffer) -> Vec<String> {
            (0..buffer.area.height)
                .map(|y| {
                    let mut row = String::new();
                    let mut hidden = 0;
                    for x in 0..buffer.area.width {
                        // The cells covered by a wide character hold a blank.
                        if hidden > 0 {
                            hidden -= 1;
                            continue;
                        }
                        let symbol = buffer[(x, y)].symbol();
                        hidden = wrap::width(symbol).saturating_sub(1);
                        row.push_str(symbol);
                    }
                    row.trim_end().to_owned()
                })
                .collect()
        }

        #[test]
        fn the_hidden_mention_counts() {
            let app = hostile_app();
            assert!(app.rooms[0].log[&2].mention);
            // And is drawn as one: the time is highlighted.
            assert_eq!(draw(&app)[(0, 4)].fg, Color::Yellow);
        }

        #[test]
        fn a_hostile_peer_stays_in_its_cells_and_lines() {
            let app = hostile_app();
            let buffer = draw(&app);
            let screen = rows(&buffer);
            let three = "\u{301}\u{316}\u{34d}";
            let four = ["👨"; 4].join("\u{200d}");
            // The lines around the hostile message are untouched, its text
            // is on its own two lines (the separator broke it like \n),
            // each base carries three marks, and the joined men are cut
            // into pictures of at most four.
            assert_eq!(screen[3], "14:14 bob: above");
            assert_eq!(screen[4], format!("14:15 mal{three}lory␤: z{three}alice!"));
            assert_eq!(screen[5], format!("{:16}{four}{four}👨\u{200d}👨", ""));
            assert_eq!(screen[6], "14:16 bob: below");
            assert_eq!(screen[0], " #general  3 online: alice, bob, eve");
            assert_eq!(screen[9], format!("m{three}�2J is typing…"));
            assert_eq!(
                screen[11],
                " ● connected │ alice @ 192.168.1.23:8765 │ ␛]52;"
            );
            let notice = app.notice.as_ref().map(|n| n.text.as_str());
            assert_eq!(notice, Some("␛]52;c;cHduZWQ=␇␤boom"));
            // Nothing is drawn past the end of the hostile text.
            let end = wrap::width(&screen[4]) as u16;
            for x in end..buffer.area.width {
                assert_eq!(buffer[(x, 4)].symbol(), " ", "column {x}");
            }
            // No cell holds a control, an invisible character (other than
            // the joiners of the men) or more marks than one base may have.
            for cell in buffer.content() {
                let symbol = cell.symbol();
                assert!(!symbol.contains(char::is_control), "{symbol:?}");
                assert!(
                    !symbol.contains(|c| is_default_ignorable(c) && c != ZWJ),
                    "{symbol:?}"
                );
                assert!(most_marks(symbol) <= MAX_MARKS, "{symbol:?}");
                assert!(symbol.matches(ZWJ).count() <= MAX_JOINS, "{symbol:?}");
            }
        }
    }
}
