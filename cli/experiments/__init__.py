"""Many runs at once: privacy sweeps (fgssl sweep) and experiment studies (fgssl study)."""
