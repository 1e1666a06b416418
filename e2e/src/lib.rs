//! End-to-end scenario suite. Built under issue 10.
