//! The one test harness of the workspace.
