//! Reading the last lines of a log back, into its rotated files (helper).
