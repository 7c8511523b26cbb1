//! Actor tests with a fake spawner under paused time.
