"""One module per scenario of issue 6; each exposes `Config` (short defaults, `long()` for the CLI) and
`run(bed, config) -> ScenarioResult`."""
