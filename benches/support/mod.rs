//! Shared by the bench binaries.

/// Criterion draws its HTML report's plots with plotters, and plotters is
/// built with `ab_glyph` (for `examples/margin.rs`), which renders text only
/// with fonts registered at run time: register the embedded Noto Sans as
/// the sans-serif family criterion uses, before any report is drawn.
pub fn register_plot_font() {
    if plotters::style::register_font(
        "sans-serif",
        plotters::style::FontStyle::Normal,
        ttf_noto_sans::REGULAR,
    )
    .is_err()
    {
        eprintln!("the embedded Noto Sans font did not load; criterion's plots will fail");
    }
}
