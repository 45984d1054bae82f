//! Receipt signatures. KRA's algorithm is not public (kra-protocol.md §5): only the form is
//! known, 26 base32 characters of internal data and a 16-character signature. The sandbox
//! derives both with HMAC-SHA256 under a per-device secret over the receipt's canonical
//! data, so it can later verify any receipt it issued.

use data_encoding::BASE32_NOPAD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// What a receipt signature covers.
#[derive(Debug, Clone)]
pub struct ReceiptData<'a> {
    pub tin: &'a str,
    pub bhf_id: &'a str,
    pub sdc_id: &'a str,
    pub mrc_no: &'a str,
    pub invc_no: u64,
    pub label: &'a str,
    pub cur_rcpt_no: u64,
    pub tot_rcpt_no: u64,
    pub sdc_date_time: &'a str,
    /// SHA-256 (hex) of the request exactly as received, so the signature binds its bytes.
    pub payload_sha256: &'a str,
}

/// The digest a receipt's signature covers, of the request bytes as received.
pub fn payload_digest(payload: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(payload))
}

impl ReceiptData<'_> {
    fn canonical(&self) -> Vec<u8> {
        let mut text = format!(
            "{}|{}|{}|{}|{}|{}|{}|{}|{}|",
            self.tin,
            self.bhf_id,
            self.sdc_id,
            self.mrc_no,
            self.invc_no,
            self.label,
            self.cur_rcpt_no,
            self.tot_rcpt_no,
            self.sdc_date_time
        )
        .into_bytes();
        text.extend_from_slice(self.payload_sha256.as_bytes());
        text
    }
}

fn mac(secret: &[u8], purpose: &str, data: &[u8]) -> Vec<u8> {
    let mut mac = match <HmacSha256 as Mac>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(purpose.as_bytes());
    mac.update(b"\n");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// `(intrlData, rcptSign)`: 16 MAC bytes as 26 base32 characters, and 10 as 16.
pub fn sign(secret: &[u8], receipt: &ReceiptData<'_>) -> (String, String) {
    let canonical = receipt.canonical();
    let internal = BASE32_NOPAD.encode(&mac(secret, "intrlData", &canonical)[..16]);
    let signature = BASE32_NOPAD.encode(&mac(secret, "rcptSign", &canonical)[..10]);
    (internal, signature)
}

/// Whether a receipt's internal data and signature are the ones this device would issue.
pub fn verify(secret: &[u8], receipt: &ReceiptData<'_>, intrl_data: &str, rcpt_sign: &str) -> bool {
    let (internal, signature) = sign(secret, receipt);
    // Not secret-dependent timing that matters in a sandbox, but compare in full anyway.
    internal.as_bytes() == intrl_data.trim().as_bytes()
        && signature.as_bytes() == rcpt_sign.trim().as_bytes()
}

/// A fresh random secret (device signing key) or key material.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to a time-derived value; only a sandbox uses this.
        let seed = Sha256::digest(format!("{:?}", std::time::SystemTime::now()).as_bytes());
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = seed[i % seed.len()];
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(payload_sha256: &str) -> ReceiptData<'_> {
        ReceiptData {
            tin: "P051234567A",
            bhf_id: "00",
            sdc_id: "KRACU0100000001",
            mrc_no: "WIS00000001",
            invc_no: 1,
            label: "NS",
            cur_rcpt_no: 1,
            tot_rcpt_no: 1,
            sdc_date_time: "20260707114122",
            payload_sha256,
        }
    }

    #[test]
    fn forms_of_the_real_receipts() {
        let (internal, signature) = sign(b"secret", &receipt("0f"));
        assert_eq!(internal.len(), 26);
        assert_eq!(signature.len(), 16);
        let base32 = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        };
        assert!(
            base32(&internal) && base32(&signature),
            "{internal} {signature}"
        );
    }

    #[test]
    fn verifies_its_own_and_nothing_else() {
        let (internal, signature) = sign(b"secret", &receipt("0f"));
        assert!(verify(b"secret", &receipt("0f"), &internal, &signature));
        assert!(!verify(b"other", &receipt("0f"), &internal, &signature));
        assert!(!verify(b"secret", &receipt("1e"), &internal, &signature));
        let mut changed = receipt("0f");
        changed.cur_rcpt_no = 2;
        assert!(!verify(b"secret", &changed, &internal, &signature));
    }
}
