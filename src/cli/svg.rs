//! SVG charts written directly: a few rectangles, lines and labels,
//! nothing to install, no fonts needed to produce them, and the files diff
//! well. The bench's and the rush's charts are drawn with these.

use std::fmt::Write as _;

pub const WIDTH: f64 = 960.0;
pub const HEIGHT: f64 = 440.0;
pub const LEFT: f64 = 80.0;
pub const RIGHT: f64 = 180.0;
pub const TOP: f64 = 50.0;
pub const BOTTOM: f64 = 70.0;

/// Colours per series, colour-blind safe (Okabe–Ito).
pub const COLOURS: [&str; 6] = [
    "#999999", "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00",
];

/// The smallest 1, 2 or 5 times a power of ten at or above `v` (1 for 0).
pub fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|x| *x >= v)
        .unwrap_or(10.0 * power)
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG document being written.
pub struct Svg {
    /// The document so far.
    pub body: String,
}

impl Svg {
    pub fn new(title: &str) -> Svg {
        let mut body = String::new();
        let _ = writeln!(
            body,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">"#
        );
        let _ = writeln!(body, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let mut svg = Svg { body };
        svg.text(WIDTH / 2.0, 28.0, "middle", 16.0, title);
        svg
    }

    pub fn text(&mut self, x: f64, y: f64, anchor: &str, size: f64, text: &str) {
        let _ = writeln!(
            self.body,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-size="{size}">{}</text>"#,
            escape(text)
        );
    }

    /// The y axis from 0 to `top` with five gridlines, labelled `unit`.
    pub fn y_axis(&mut self, top: f64, unit: &str) {
        let plot_h = HEIGHT - TOP - BOTTOM;
        for i in 0..=5 {
            let value = top * f64::from(i) / 5.0;
            let y = HEIGHT - BOTTOM - plot_h * f64::from(i) / 5.0;
            let _ = writeln!(
                self.body,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#dddddd"/>"##,
                WIDTH - RIGHT
            );
            self.text(LEFT - 8.0, y + 4.0, "end", 12.0, &format!("{value:.0}"));
        }
        let _ = writeln!(
            self.body,
            r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333333"/>"##,
            HEIGHT - BOTTOM
        );
        let _ = writeln!(
            self.body,
            r#"<text x="18" y="{:.1}" text-anchor="middle" font-size="13" transform="rotate(-90 18 {:.1})">{}</text>"#,
            TOP + plot_h / 2.0,
            TOP + plot_h / 2.0,
            escape(unit)
        );
    }

    /// The x axis's title, under the plot's middle.
    pub fn x_title(&mut self, title: &str) {
        self.text(
            LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
            HEIGHT - BOTTOM + 45.0,
            "middle",
            13.0,
            title,
        );
    }

    /// Legend entry `i`, at the right of the plot.
    pub fn legend(&mut self, i: usize, colour: &str, name: &str, dashed: bool) {
        let x = WIDTH - RIGHT + 20.0;
        let y = TOP + 10.0 + 22.0 * i as f64;
        let dash = if dashed {
            r#" stroke-dasharray="3 3""#
        } else {
            ""
        };
        let _ = writeln!(
            self.body,
            r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{colour}" stroke-width="8"{dash}/>"#,
            x + 24.0
        );
        self.text(x + 32.0, y + 4.0, "start", 13.0, name);
    }

    pub fn finish(mut self) -> String {
        self.body.push_str("</svg>\n");
        self.body
    }
}

/// Every opened element is closed, in order (the SVG is well-formed).
#[cfg(test)]
pub fn assert_well_formed(svg: &str) {
    assert!(svg.starts_with("<svg "), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    let mut open: Vec<&str> = Vec::new();
    for tag in svg.split('<').skip(1) {
        let tag = tag.split('>').next().unwrap();
        let name = tag
            .trim_start_matches('/')
            .split([' ', '/'])
            .next()
            .unwrap();
        if tag.starts_with('/') {
            assert_eq!(open.pop(), Some(name), "closing {name} in {svg}");
        } else if !tag.ends_with('/') {
            open.push(name);
        }
    }
    assert!(open.is_empty(), "unclosed {open:?}");
}
