//! Data plane proxy. Built under issue 5.
