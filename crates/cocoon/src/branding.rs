//! The tenant's colours as the page uses them. The accent colour comes from
//! an admin and ends up inside a `<style>` element, so only a strict
//! `#rrggbb` is accepted; anything else falls back to the default.

/// The portal's own accent when the tenant set none (a dark blue that
/// carries white text at well over 4.5:1).
pub const DEFAULT_ACCENT: &str = "#1f4e79";

/// A validated accent and the text colour to put on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Palette {
    pub accent: String,
    pub on_accent: &'static str,
}

impl Palette {
    pub fn for_accent(accent: Option<&str>) -> Palette {
        let accent = accent
            .and_then(parse_hex)
            .map(|rgb| (rgb, accent.unwrap_or_default().to_ascii_lowercase()))
            .unwrap_or_else(|| {
                (
                    parse_hex(DEFAULT_ACCENT).unwrap_or((0, 0, 0)),
                    DEFAULT_ACCENT.to_owned(),
                )
            });
        Palette {
            on_accent: text_on(accent.0),
            accent: accent.1,
        }
    }

    /// CSS custom properties for the nonce'd `<style>` element.
    pub fn css(&self) -> String {
        format!(
            ":root{{--accent:{};--on-accent:{};}}",
            self.accent, self.on_accent
        )
    }
}

/// `#rrggbb` only (no names, no short form, nothing that could close the
/// style element or add a declaration).
pub fn parse_hex(text: &str) -> Option<(u8, u8, u8)> {
    let hex = text.strip_prefix('#')?;
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let channel = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    Some((channel(0)?, channel(2)?, channel(4)?))
}

/// WCAG 2 relative luminance.
pub fn luminance((r, g, b): (u8, u8, u8)) -> f64 {
    let linear = |c: u8| {
        let c = f64::from(c) / 255.0;
        if c <= 0.039_28 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * linear(r) + 0.7152 * linear(g) + 0.0722 * linear(b)
}

pub fn contrast(a: f64, b: f64) -> f64 {
    let (light, dark) = if a > b { (a, b) } else { (b, a) };
    (light + 0.05) / (dark + 0.05)
}

/// Black or white, whichever contrasts more with the background. One of
/// the two always reaches at least 4.58:1 (the worst case is a background
/// of luminance ≈ 0.18), so text on any accent meets WCAG AA.
pub fn text_on(background: (u8, u8, u8)) -> &'static str {
    let l = luminance(background);
    if contrast(l, 0.0) >= contrast(l, 1.0) {
        "#000000"
    } else {
        "#ffffff"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_on_any_accent_meets_aa() {
        // Every 17th step of each channel: ~3,400 colours.
        for r in (0..=255u16).step_by(17) {
            for g in (0..=255u16).step_by(17) {
                for b in (0..=255u16).step_by(17) {
                    let rgb = (r as u8, g as u8, b as u8);
                    let text = if text_on(rgb) == "#000000" { 0.0 } else { 1.0 };
                    let ratio = contrast(luminance(rgb), text);
                    assert!(ratio >= 4.5, "{rgb:?}: {ratio}");
                }
            }
        }
        assert_eq!(text_on((255, 255, 0)), "#000000");
        assert_eq!(text_on((0, 0, 128)), "#ffffff");
    }

    #[test]
    fn only_strict_hex_reaches_the_stylesheet() {
        assert_eq!(parse_hex("#FF8800"), Some((255, 136, 0)));
        for bad in [
            "red",
            "#f80",
            "#ff8800;}body{",
            "ff8800",
            "#ff88zz",
            "#ff88000",
        ] {
            assert_eq!(parse_hex(bad), None, "{bad}");
        }
        let palette = Palette::for_accent(Some("#FFEE00"));
        assert_eq!(palette.accent, "#ffee00");
        assert_eq!(palette.on_accent, "#000000");
        let fallback = Palette::for_accent(Some("</style><script>"));
        assert_eq!(fallback.accent, DEFAULT_ACCENT);
        assert_eq!(fallback.on_accent, "#ffffff");
        assert_eq!(Palette::for_accent(None), fallback);
    }
}
