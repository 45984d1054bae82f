//! KRA result codes (kra-protocol.md §4): meaning, class, success normalisation.

use std::fmt;

/// What a result code says about the call, for deciding what to do next.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ResultClass {
    /// The call did what was asked.
    Success,
    /// A lookup found nothing (`001`): not an error.
    EmptyResult,
    /// The control unit's own client library failed (891–899); for a VSCU, 894 also means it
    /// cannot reach KRA.
    Client,
    /// Missing identity headers (900).
    Auth,
    /// The device is unknown, already installed, or of the wrong kind (901–905).
    Device,
    /// The request itself is wrong (910–912): fix it, do not retry it as is.
    Request,
    /// Already received, or out of order (921/922).
    Sequence,
    /// Overlapping data: the same record was received before (994).
    Duplicate,
    /// Too many requests (990).
    RateLimit,
    /// KRA's server failed (991–999): may succeed later.
    Server,
    /// A code this library does not know.
    Unknown,
}

macro_rules! result_codes {
    ($($variant:ident = $code:literal, $class:ident, $meaning:literal;)*) => {
        /// A KRA result code. Unknown codes are kept as [`ResultCode::Other`].
        #[derive(Clone, PartialEq, Eq, Hash, Debug)]
        pub enum ResultCode {
            $(#[doc = $meaning] $variant,)*
            Other(String),
        }

        impl ResultCode {
            /// The code as KRA writes it (`"000"`).
            pub fn code(&self) -> &str {
                match self {
                    $(ResultCode::$variant => $code,)*
                    ResultCode::Other(code) => code,
                }
            }

            /// KRA's meaning of the code.
            pub fn meaning(&self) -> &'static str {
                match self {
                    $(ResultCode::$variant => $meaning,)*
                    ResultCode::Other(_) => "unknown result code",
                }
            }

            pub fn class(&self) -> ResultClass {
                match self {
                    $(ResultCode::$variant => ResultClass::$class,)*
                    ResultCode::Other(_) => ResultClass::Unknown,
                }
            }

            fn known(code: &str) -> Option<ResultCode> {
                match code {
                    $($code => Some(ResultCode::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

result_codes! {
    Succeeded = "000", Success, "It is succeeded";
    NoSearchResult = "001", EmptyResult, "There is no search result";
    InvalidLabelCombination = "834", Request, "Invalid receipt label combination (upstream VSDC)";
    RequestUrlError = "891", Client, "Error creating the request URL";
    RequestHeaderError = "892", Client, "Error creating the request header";
    RequestBodyError = "893", Client, "Error creating the request body";
    ServerCommunicationError = "894", Client, "Server communication error";
    UnallowedRequestMethod = "895", Client, "Unallowed request method";
    RequestStatusError = "896", Client, "Request status error";
    ClientError = "899", Client, "Client error";
    NoHeaderInformation = "900", Auth, "There is no Header information";
    InvalidDevice = "901", Device, "It is not valid device";
    DeviceInstalled = "902", Device, "This device is installed";
    OnlyOscuVerifiable = "903", Device, "Only OSCU device can be verified";
    OnlyOscuVerifiableLive = "905", Device, "Only OSCU device can be verified";
    RequestParameterError = "910", Request, "Request parameter error";
    NoRequestFullText = "911", Request, "There is no request full text";
    RequestMethodError = "912", Request, "There is a request Method error";
    SalesDataCannotBeReceived = "921", Sequence, "Sales or sales invoice data which is declared cannot be received";
    SalesInvoiceBeforeSales = "922", Sequence, "Sales invoice data can be received after receiving the sales data";
    MaximumViewsExceeded = "990", RateLimit, "The maximum number of views are exceeded";
    RegistrationError = "991", Server, "Error during registration";
    ModificationError = "992", Server, "Error during modification";
    DeletionError = "993", Server, "Error during deletion";
    OverlappedData = "994", Duplicate, "There is an overlapped Data";
    NoDownloadedFile = "995", Server, "There is no downloaded file";
    UnknownError = "999", Server, "Unknown error, ask the administrator";
}

impl ResultCode {
    /// Reads a code as servers send it: trimmed, and with the success spellings of the
    /// VSCU JAR (`00`), GavaConnect (`0000`) and others (`0`) normalised to `000`.
    pub fn parse(text: &str) -> ResultCode {
        let text = text.trim();
        match text {
            "0" | "00" | "000" | "0000" => ResultCode::Succeeded,
            _ => ResultCode::known(text).unwrap_or_else(|| ResultCode::Other(text.to_owned())),
        }
    }

    /// `000`, or `001` (an empty lookup).
    pub fn is_success(&self) -> bool {
        matches!(
            self.class(),
            ResultClass::Success | ResultClass::EmptyResult
        )
    }

    /// The duplicate family: the record (a sale's `invcNo`) was received before. KRA is
    /// reported to answer 921 (`etims`), 994 (OSCU) or 899 (VSCU) — treat them alike and
    /// look the original up rather than renumbering (kra-protocol.md §6).
    pub fn is_duplicate(&self) -> bool {
        matches!(
            self,
            ResultCode::SalesDataCannotBeReceived
                | ResultCode::OverlappedData
                | ResultCode::ClientError
        )
    }
}

impl fmt::Display for ResultCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl serde::Serialize for ResultCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

impl<'de> serde::Deserialize<'de> for ResultCode {
    /// From a string or a number (`0`).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(deserializer)? {
            serde_json::Value::String(text) => Ok(ResultCode::parse(&text)),
            serde_json::Value::Number(n) => Ok(ResultCode::parse(&n.to_string())),
            other => Err(serde::de::Error::custom(format_args!(
                "resultCd must be a string, found {other}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_spellings_normalise() {
        for text in ["0", "00", "000", "0000", " 000 "] {
            assert_eq!(ResultCode::parse(text), ResultCode::Succeeded, "{text}");
            assert!(ResultCode::parse(text).is_success());
        }
        assert!(ResultCode::parse("001").is_success());
        assert_eq!(ResultCode::parse("001").class(), ResultClass::EmptyResult);
        assert!(!ResultCode::parse("910").is_success());
    }

    #[test]
    fn the_duplicate_family() {
        for text in ["921", "994", "899"] {
            assert!(ResultCode::parse(text).is_duplicate(), "{text}");
        }
        for text in ["000", "910", "922", "902"] {
            assert!(!ResultCode::parse(text).is_duplicate(), "{text}");
        }
    }

    #[test]
    fn every_code_has_meaning_and_class() {
        assert_eq!(ResultCode::parse("902"), ResultCode::DeviceInstalled);
        assert_eq!(ResultCode::parse("902").class(), ResultClass::Device);
        assert_eq!(
            ResultCode::parse("902").meaning(),
            "This device is installed"
        );
        assert_eq!(ResultCode::parse("994").class(), ResultClass::Duplicate);
        assert_eq!(ResultCode::parse("E04"), ResultCode::Other("E04".into()));
        assert_eq!(ResultCode::parse("E04").class(), ResultClass::Unknown);
        assert_eq!(ResultCode::parse("E04").code(), "E04");
        let json: ResultCode = serde_json::from_str("0").unwrap();
        assert_eq!(json, ResultCode::Succeeded);
    }
}
