//! Phone numbers as the API stores them: E.164, with French national numbers (`0612345678`)
//! given the `+33` country code, as `jobs-api.md` shows.

/// The E.164 form of `raw`, or why it cannot be read as a phone number.
pub fn normalize_number(raw: &str) -> Result<String, String> {
    let compact: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '.' | '-'))
        .collect();
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let international = if let Some(rest) = compact.strip_prefix('+') {
        Some(rest)
    } else {
        compact.strip_prefix("00")
    };
    let e164 = match international {
        Some(digits) if all_digits(digits) && (8..=15).contains(&digits.len()) => {
            format!("+{digits}")
        }
        Some(_) => String::new(),
        None if compact.len() == 10 && all_digits(&compact) && compact.starts_with('0') => {
            format!("+33{}", &compact[1..])
        }
        None => String::new(),
    };
    if e164.is_empty() {
        Err(format!("phone number `{raw}` cannot be read as E.164"))
    } else {
        Ok(e164)
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_number;

    #[test]
    fn french_national_numbers_get_the_country_code() {
        assert_eq!(normalize_number("0612345678").unwrap(), "+33612345678");
        assert_eq!(normalize_number("0123456789").unwrap(), "+33123456789");
        assert_eq!(normalize_number("01 23 45 67 89").unwrap(), "+33123456789");
        assert_eq!(normalize_number("06.12.34.56.78").unwrap(), "+33612345678");
        assert_eq!(normalize_number("06-12-34-56-78").unwrap(), "+33612345678");
        assert_eq!(normalize_number("0033612345678").unwrap(), "+33612345678");
    }

    #[test]
    fn e164_numbers_are_kept() {
        assert_eq!(normalize_number("+33612345678").unwrap(), "+33612345678");
        assert_eq!(normalize_number("+1 415 555 2671").unwrap(), "+14155552671");
        assert_eq!(normalize_number("+49301234").unwrap(), "+49301234");
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "",
            "612345678",
            "06123456789",
            "33612345678",
            "+3361234567890123",
            "+1234567",
            "+33 6 12 34 ab 78",
            "06 12 34 56 7x",
            "(06)12345678",
            "++33612345678",
        ] {
            let err = normalize_number(bad).unwrap_err();
            assert!(err.contains("E.164"), "{bad}: {err}");
        }
    }
}
