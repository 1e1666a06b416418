//! Certificate authority: SPIFFE SVID issuance. Built under issue 3.
