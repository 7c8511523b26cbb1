//! The scale curve as a PNG (`docs/scale.png`), drawn by the bench itself.
//!
//! Why not gnuplot: it is not on the machine, and installing it from the
//! bench would make a benchmark depend on the network and on root. Why
//! not SVG: the README wants a picture that any viewer shows, and turning
//! an SVG into a PNG needs a converter that is not here either. So this
//! file rasterizes a few lines, dots and labels (a 5×7 pixel font) into an
//! RGB buffer and writes it as a PNG with uncompressed deflate blocks
//! (CRC-32 and Adler-32 are a few lines each): about 1.5 MB, no dependency.
//!
//! Left panel: microseconds per instance for each cost against N (log
//! scale); a flat line is a cost linear in N. Right panel: the daemon's
//! RSS against N with the targets of SPEC §16.

use std::path::Path;

use crate::scale::Point;

const W: usize = 1120;
const H: usize = 600;

struct Canvas {
    px: Vec<[u8; 3]>,
}

type Rgb = [u8; 3];

/// A curve: its legend, its points (N, y), its colour, its dash length.
type Series<'a> = (&'a str, Vec<(f64, f64)>, Rgb, usize);

const BLACK: Rgb = [0, 0, 0];
const GREY: Rgb = [200, 200, 200];

impl Canvas {
    fn new() -> Canvas {
        Canvas {
            px: vec![[255, 255, 255]; W * H],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < W && (y as usize) < H {
            self.px[y as usize * W + x as usize] = c;
        }
    }

    fn dot(&mut self, x: i64, y: i64, r: i64, c: Rgb) {
        for dy in -r..=r {
            for dx in -r..=r {
                if dx * dx + dy * dy <= r * r {
                    self.set(x + dx, y + dy, c);
                }
            }
        }
    }

    /// A line `thick` pixels wide; `dash` > 0 draws dashes that long.
    fn line(
        &mut self,
        (x0, y0): (f64, f64),
        (x1, y1): (f64, f64),
        thick: i64,
        c: Rgb,
        dash: usize,
    ) {
        let steps = ((x1 - x0).abs().max((y1 - y0).abs()) as usize).max(1);
        for i in 0..=steps {
            if dash > 0 && (i / dash) % 2 == 1 {
                continue;
            }
            let t = i as f64 / steps as f64;
            let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
            self.dot(x.round() as i64, y.round() as i64, thick / 2, c);
        }
    }

    /// Text in the 5×7 font, `scale` pixels per font pixel, from (x, y) top left.
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        let mut cx = x;
        for ch in s.chars() {
            let rows = glyph(ch.to_ascii_uppercase());
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.set(cx + col * scale + dx, y + r as i64 * scale + dy, c);
                            }
                        }
                    }
                }
            }
            cx += 6 * scale;
        }
    }

    fn png(&self) -> Vec<u8> {
        let mut raw = Vec::with_capacity(H * (W * 3 + 1));
        for row in self.px.chunks(W) {
            raw.push(0); // filter: none
            for p in row {
                raw.extend_from_slice(p);
            }
        }
        // zlib: header, stored deflate blocks of at most 65,535 bytes, Adler-32.
        let mut z = vec![0x78, 0x01];
        let mut blocks = raw.chunks(65_535).peekable();
        while let Some(b) = blocks.next() {
            z.push(u8::from(blocks.peek().is_none()));
            let len = b.len() as u16;
            z.extend_from_slice(&len.to_le_bytes());
            z.extend_from_slice(&(!len).to_le_bytes());
            z.extend_from_slice(b);
        }
        z.extend_from_slice(&adler32(&raw).to_be_bytes());
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(W as u32).to_be_bytes());
        ihdr.extend_from_slice(&(H as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &z);
        chunk(&mut out, b"IEND", &[]);
        out
    }
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

/// 5×7 glyphs, one byte per row (bit 4 = leftmost column).
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [14, 17, 19, 21, 25, 17, 14],
        '1' => [4, 12, 4, 4, 4, 4, 14],
        '2' => [14, 17, 1, 2, 4, 8, 31],
        '3' => [31, 2, 4, 2, 1, 17, 14],
        '4' => [2, 6, 10, 18, 31, 2, 2],
        '5' => [31, 16, 30, 1, 1, 17, 14],
        '6' => [6, 8, 16, 30, 17, 17, 14],
        '7' => [31, 1, 2, 4, 8, 8, 8],
        '8' => [14, 17, 17, 14, 17, 17, 14],
        '9' => [14, 17, 17, 15, 1, 2, 12],
        'A' => [14, 17, 17, 31, 17, 17, 17],
        'B' => [30, 17, 17, 30, 17, 17, 30],
        'C' => [14, 17, 16, 16, 16, 17, 14],
        'D' => [28, 18, 17, 17, 17, 18, 28],
        'E' => [31, 16, 16, 30, 16, 16, 31],
        'F' => [31, 16, 16, 30, 16, 16, 16],
        'G' => [14, 17, 16, 23, 17, 17, 15],
        'H' => [17, 17, 17, 31, 17, 17, 17],
        'I' => [14, 4, 4, 4, 4, 4, 14],
        'J' => [7, 2, 2, 2, 2, 18, 12],
        'K' => [17, 18, 20, 24, 20, 18, 17],
        'L' => [16, 16, 16, 16, 16, 16, 31],
        'M' => [17, 27, 21, 21, 17, 17, 17],
        'N' => [17, 17, 25, 21, 19, 17, 17],
        'O' => [14, 17, 17, 17, 17, 17, 14],
        'P' => [30, 17, 17, 30, 16, 16, 16],
        'Q' => [14, 17, 17, 17, 21, 18, 13],
        'R' => [30, 17, 17, 30, 20, 18, 17],
        'S' => [15, 16, 16, 14, 1, 1, 30],
        'T' => [31, 4, 4, 4, 4, 4, 4],
        'U' => [17, 17, 17, 17, 17, 17, 14],
        'V' => [17, 17, 17, 17, 17, 10, 4],
        'W' => [17, 17, 17, 21, 21, 21, 10],
        'X' => [17, 17, 10, 4, 10, 17, 17],
        'Y' => [17, 17, 17, 10, 4, 4, 4],
        'Z' => [31, 1, 2, 4, 8, 16, 31],
        '.' => [0, 0, 0, 0, 0, 12, 12],
        ',' => [0, 0, 0, 0, 12, 4, 8],
        ':' => [0, 12, 12, 0, 12, 12, 0],
        '-' => [0, 0, 0, 31, 0, 0, 0],
        '/' => [1, 1, 2, 4, 8, 16, 16],
        '(' => [2, 4, 8, 8, 8, 4, 2],
        ')' => [8, 4, 2, 2, 2, 4, 8],
        '<' => [2, 4, 8, 16, 8, 4, 2],
        '=' => [0, 0, 31, 0, 31, 0, 0],
        '×' => [0, 17, 10, 4, 10, 17, 0],
        '`' => [8, 4, 0, 0, 0, 0, 0],
        '+' => [0, 4, 4, 31, 4, 4, 0],
        _ => [0; 7],
    }
}

/// One panel: x is N on a log scale; y linear from 0 to `ymax`, or
/// logarithmic from `ymin` to `ymax` when `log`.
struct Panel {
    x0: f64,
    y0: f64,
    w: f64,
    h: f64,
    nmin: f64,
    nmax: f64,
    ymin: f64,
    ymax: f64,
    log: bool,
}

impl Panel {
    fn at(&self, n: f64, y: f64) -> (f64, f64) {
        let fx = (n.ln() - self.nmin.ln()) / (self.nmax.ln() - self.nmin.ln());
        let fy = if self.log {
            (y.max(self.ymin).ln() - self.ymin.ln()) / (self.ymax.ln() - self.ymin.ln())
        } else {
            y / self.ymax
        };
        let fy = fy.clamp(0.0, 1.05);
        (self.x0 + fx * self.w, self.y0 + self.h - fy * self.h)
    }

    fn axes(&self, c: &mut Canvas, ns: &[usize], title: &str, unit: &str) {
        let ticks: Vec<f64> = if self.log {
            let mut t = Vec::new();
            let mut y = self.ymin;
            while y <= self.ymax * 1.001 {
                t.push(y);
                y *= 10.0;
            }
            t
        } else {
            (0..=4).map(|i| self.ymax * i as f64 / 4.0).collect()
        };
        for y in ticks {
            let (_, py) = self.at(self.nmin, y);
            c.line((self.x0, py), (self.x0 + self.w, py), 1, GREY, 0);
            let label = if y >= 20.0 || y == 0.0 {
                format!("{y:.0}")
            } else {
                format!("{y}")
            };
            c.text(
                self.x0 as i64 - 8 - 12 * label.len() as i64,
                py as i64 - 7,
                &label,
                2,
                BLACK,
            );
        }
        for &n in ns {
            let (px, _) = self.at(n as f64, 0.0);
            c.line((px, self.y0), (px, self.y0 + self.h), 1, GREY, 0);
            let label = match n {
                n if n >= 1000 && n % 1000 == 0 => format!("{}K", n / 1000),
                n => n.to_string(),
            };
            c.text(
                px as i64 - 6 * label.len() as i64,
                (self.y0 + self.h) as i64 + 10,
                &label,
                2,
                BLACK,
            );
        }
        c.line(
            (self.x0, self.y0 + self.h),
            (self.x0 + self.w, self.y0 + self.h),
            2,
            BLACK,
            0,
        );
        c.line((self.x0, self.y0), (self.x0, self.y0 + self.h), 2, BLACK, 0);
        c.text(self.x0 as i64, self.y0 as i64 - 40, title, 2, BLACK);
        c.text(self.x0 as i64, self.y0 as i64 - 20, unit, 2, BLACK);
        c.text(
            (self.x0 + self.w / 2.0) as i64 - 60,
            (self.y0 + self.h) as i64 + 32,
            "INSTANCES (N)",
            2,
            BLACK,
        );
    }

    fn series(&self, c: &mut Canvas, pts: &[(f64, f64)], color: Rgb, dash: usize) {
        for w in pts.windows(2) {
            c.line(
                self.at(w[0].0, w[0].1),
                self.at(w[1].0, w[1].1),
                3,
                color,
                dash,
            );
        }
        for &(n, y) in pts {
            let (x, y) = self.at(n, y);
            c.dot(x as i64, y as i64, 4, color);
        }
    }
}

pub fn scale_png(points: &[Point], path: &Path) -> Result<(), String> {
    if points.len() < 2 {
        return Err("fewer than two sizes".into());
    }
    let ns: Vec<usize> = points.iter().map(|p| p.n).collect();
    let nmin = ns[0] as f64;
    let nmax = ns[ns.len() - 1] as f64;
    let per = |f: &dyn Fn(&Point) -> f64| -> Vec<(f64, f64)> {
        points
            .iter()
            .map(|p| (p.n as f64, f(p) * 1000.0 / p.n as f64))
            .collect()
    };
    let series: [Series; 6] = [
        (
            "LAUNCH TO ALL EXECD",
            per(&|p| p.spawn.median),
            [200, 40, 40],
            0,
        ),
        (
            "  LIMIT: SPAWN LOOP",
            per(&|p| p.spawn_limit.median),
            [200, 40, 40],
            8,
        ),
        ("STOP ALL", per(&|p| p.stop.median), [40, 90, 200], 0),
        (
            "  LIMIT: KILL + WAITPID",
            per(&|p| p.stop_limit.median),
            [40, 90, 200],
            8,
        ),
        ("STATUS", per(&|p| p.status.median), [30, 150, 60], 0),
        (
            "RELOAD, UNCHANGED",
            per(&|p| p.reload.median),
            [150, 60, 170],
            0,
        ),
    ];
    let top = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(1.0f64, f64::max);
    let low = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .filter(|y| *y > 0.0)
        .fold(top, f64::min);
    let decade = |y: f64| 10f64.powf(y.log10().floor());
    let mut c = Canvas::new();
    let left = Panel {
        x0: 90.0,
        y0: 70.0,
        w: 600.0,
        h: 380.0,
        nmin,
        nmax,
        ymin: decade(low),
        ymax: decade(top) * 10.0,
        log: true,
    };
    left.axes(
        &mut c,
        &ns,
        "COST PER INSTANCE (FLAT = LINEAR IN N)",
        "MICROSECONDS PER INSTANCE, LOG SCALE",
    );
    for (i, (name, pts, color, dash)) in series.iter().enumerate() {
        left.series(&mut c, pts, *color, *dash);
        // The legend, under the panels: each cost beside its limit.
        let (lx, ly) = (90 + 340 * (i as i64 / 2), 530 + 24 * (i as i64 % 2));
        c.line(
            (lx as f64, ly as f64 + 6.0),
            (lx as f64 + 30.0, ly as f64 + 6.0),
            3,
            *color,
            *dash / 2,
        );
        c.text(lx + 40, ly, name.trim_start(), 2, BLACK);
    }
    let rss: Vec<(f64, f64)> = points.iter().map(|p| (p.n as f64, p.rss.median)).collect();
    let rmax = (rss.iter().map(|p| p.1).fold(64.0f64, f64::max) * 1.1 / 10.0).ceil() * 10.0;
    let right = Panel {
        x0: 800.0,
        y0: 70.0,
        w: 280.0,
        h: 380.0,
        nmin,
        nmax,
        ymin: 0.0,
        ymax: rmax,
        log: false,
    };
    right.axes(&mut c, &ns, "DAEMON RSS, MIB", "TARGETS IN ORANGE");
    right.series(&mut c, &rss, [40, 40, 40], 0);
    for (n, t) in [(1000.0, 20.0), (10_000.0, 64.0)] {
        if n >= nmin && n <= nmax {
            let (x, y) = right.at(n, t);
            c.line((x - 12.0, y), (x + 12.0, y), 3, [220, 120, 0], 0);
        }
    }
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(path, c.png()).map_err(|e| e.to_string())
}
