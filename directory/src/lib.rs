//! Directory: signed zones and records (built in its own issue).
