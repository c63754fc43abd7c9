"""One module per scenario; each exposes `Config` (short defaults, `long()` for the CLI) and
`run(bed, config) -> ScenarioResult`."""
