"""The results store: Parquet tables of trials, epochs and shared artifacts, and which trial a method hands in."""
