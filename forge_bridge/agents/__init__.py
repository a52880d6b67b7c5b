"""Running an agent CLI: the presets (argv, environment, tested versions), reading its output stream, the
bubblewrap sandbox around it, and budgets counted from what it reports. Imports the shared vocabulary, store/,
forges/ and workspace/."""
