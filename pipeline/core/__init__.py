"""The core library: functions on numpy arrays and files, no torch and no CLI concerns."""
