//! `GET /api/v1/links/{code}/qr?format=svg|png&size=N`: the QR code of a
//! link's short URL, for its owner only (ownership is asked of write-svc, as
//! for every owner endpoint; another owner's code is 404).
//!
//! Encoding is the `qrcode` crate's (SVG renderer built in); PNG pixels are
//! laid out here and encoded by `image`'s PNG encoder. Nothing is cached:
//! a QR code costs microseconds, and the ownership check must run each time.

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use qrcode::{Color, EcLevel, QrCode};

use super::{Ctx, view};
use crate::{
    input::{query, query_param},
    keys::Principal,
    problem::{FieldError, HttpResponse, Problem},
};

/// Pixel bounds of `size`: below 64 a phone camera struggles; above 1024
/// the image only costs bandwidth.
pub const MIN_SIZE: u32 = 64;
pub const MAX_SIZE: u32 = 1024;
pub const DEFAULT_SIZE: u32 = 256;
/// The blank border the QR specification asks for, in modules.
const QUIET_ZONE: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QrParams {
    pub format: Format,
    /// Width and height in pixels (SVG: at least this).
    pub size: u32,
}

impl QrParams {
    /// Parses `format` and `size`, naming every bad parameter at once.
    pub fn parse(params: &[(String, String)]) -> Result<Self, Problem> {
        let mut errors = Vec::new();
        let format = match query_param(params, "format") {
            None | Some("svg") => Format::Svg,
            Some("png") => Format::Png,
            Some(_) => {
                errors.push(FieldError {
                    field: "format".into(),
                    message: "must be svg or png".into(),
                });
                Format::Svg
            }
        };
        let size = match query_param(params, "size") {
            None => DEFAULT_SIZE,
            Some(raw) => match raw.parse::<u32>() {
                Ok(n) if (MIN_SIZE..=MAX_SIZE).contains(&n) => n,
                _ => {
                    errors.push(FieldError {
                        field: "size".into(),
                        message: format!("must be an integer from {MIN_SIZE} to {MAX_SIZE}"),
                    });
                    DEFAULT_SIZE
                }
            },
        };
        if errors.is_empty() {
            Ok(Self { format, size })
        } else {
            Err(Problem::validation(errors))
        }
    }
}

pub async fn link_qr(
    ctx: &Ctx<'_>,
    principal: &Principal,
    code: &str,
    req: &Request<Incoming>,
) -> Result<HttpResponse, Problem> {
    let wanted = QrParams::parse(&query(req.uri()))?;
    let link = super::links::owned_link(ctx, principal, code).await?;
    let url = view::short_url(&ctx.state.config.public_url, &link.code);
    let (body, content_type) = match wanted.format {
        Format::Svg => (Bytes::from(svg(&url, wanted.size)?), "image/svg+xml"),
        Format::Png => (Bytes::from(png(&url, wanted.size)?), "image/png"),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Owner-only content: never in a shared cache.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=300"),
    );
    Ok(response)
}

fn encode(url: &str) -> Result<QrCode, Problem> {
    // M (15 % recovery): the usual choice for printed codes.
    QrCode::with_error_correction_level(url.as_bytes(), EcLevel::M).map_err(|e| {
        tracing::warn!(error = %e, "short URL does not fit a QR code");
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "qr-too-long",
            "Cannot encode",
            "the short URL does not fit in a QR code",
        )
    })
}

/// An SVG of at least `size` × `size` pixels (whole pixels per module).
pub fn svg(url: &str, size: u32) -> Result<String, Problem> {
    Ok(encode(url)?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(size, size)
        .quiet_zone(true)
        .dark_color(qrcode::render::svg::Color("#000000"))
        .light_color(qrcode::render::svg::Color("#ffffff"))
        .build())
}

/// A grayscale PNG of exactly `size` × `size` pixels: whole pixels per
/// module (crisp edges), centred on a white margin.
pub fn png(url: &str, size: u32) -> Result<Vec<u8>, Problem> {
    let code = encode(url)?;
    let pixels = modules_to_pixels(code.width(), &code.to_colors(), size as usize);
    let mut out = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut out),
        &pixels,
        size,
        size,
        image::ExtendedColorType::L8,
    )
    .map_err(|e| {
        tracing::error!(error = %e, "PNG encoding failed");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "could not draw the QR code",
        )
    })?;
    Ok(out)
}

/// Lays out `width` × `width` modules plus the quiet zone on a `size`-pixel
/// square of 8-bit gray (0 dark, 255 light).
fn modules_to_pixels(width: usize, colors: &[Color], size: usize) -> Vec<u8> {
    let total = width + 2 * QUIET_ZONE;
    let scale = (size / total).max(1);
    let offset = size.saturating_sub(total * scale) / 2;
    let mut pixels = vec![255u8; size * size];
    for (i, color) in colors.iter().enumerate() {
        if *color != Color::Dark {
            continue;
        }
        let (mx, my) = (i % width + QUIET_ZONE, i / width + QUIET_ZONE);
        for dy in 0..scale {
            let y = offset + my * scale + dy;
            if y >= size {
                break;
            }
            let row = y * size;
            let x0 = (offset + mx * scale).min(size);
            let x1 = (x0 + scale).min(size);
            pixels[row + x0..row + x1].fill(0);
        }
    }
    pixels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_are_a_256_pixel_svg() {
        assert_eq!(
            QrParams::parse(&[]).unwrap(),
            QrParams {
                format: Format::Svg,
                size: DEFAULT_SIZE
            }
        );
        let p = QrParams::parse(&params(&[("format", "png"), ("size", "64")])).unwrap();
        assert_eq!((p.format, p.size), (Format::Png, 64));
        let p = QrParams::parse(&params(&[("size", "1024")])).unwrap();
        assert_eq!(p.size, 1024);
    }

    #[test]
    fn bad_format_and_size_are_named_together() {
        for bad in ["63", "1025", "0", "-5", "12px", "", "99999999999"] {
            let e = QrParams::parse(&params(&[("size", bad)])).unwrap_err();
            assert_eq!(e.status, 400);
            assert_eq!(e.errors[0].field, "size", "{bad:?}");
        }
        let e = QrParams::parse(&params(&[("format", "gif"), ("size", "5")])).unwrap_err();
        let fields: Vec<_> = e.errors.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["format", "size"]);
    }

    #[test]
    fn png_is_exactly_the_asked_size_and_svg_at_least() {
        let url = "http://127.0.0.1:8080/aB3xY9z";
        for size in [MIN_SIZE, 100, 333, MAX_SIZE] {
            let bytes = png(url, size).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
            // IHDR: width and height, big-endian, after the chunk header.
            assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), size);
            assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), size);
        }
        let s = svg(url, 200).unwrap();
        assert!(s.starts_with("<?xml") && s.contains("<svg"), "{s}");
        assert!(!s.contains("style="), "no inline styles: the page's CSP");
    }

    #[test]
    fn pixels_keep_a_light_quiet_zone_and_draw_dark_modules() {
        // A 1-module "code" that is dark, in a 9×9 module square, 18 px.
        let px = modules_to_pixels(1, &[Color::Dark], 18);
        assert_eq!(px.len(), 18 * 18);
        assert_eq!(px[0], 255, "corner is quiet zone");
        // Module (4,4) at scale 2 covers pixels 8..10 in both directions.
        assert_eq!(px[8 * 18 + 8], 0);
        assert_eq!(px[9 * 18 + 9], 0);
        assert_eq!(px[10 * 18 + 10], 255);
    }
}
