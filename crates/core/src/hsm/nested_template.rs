//! Attribute-array attributes (`CKA_DERIVE_TEMPLATE`, `CKA_UNWRAP_TEMPLATE`).
//!
//! cryptoki 0.12 has no variant for them. Their value is an array of
//! `CK_ATTRIBUTE` structures pointing at further values, so it is encoded here
//! as raw bytes in the C layout and passed as a vendor-defined attribute
//! (cryptoki hands the type number through unchanged). No `unsafe` is needed:
//! only addresses are written, and [`Template`] owns every buffer they point
//! to for as long as the template itself lives, which is what the borrow
//! checker enforces on the caller of the PKCS#11 function.

use std::ffi::c_ulong;

use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType};

/// `CKF_ARRAY_ATTRIBUTE | 0x212`.
pub(crate) const CKA_UNWRAP_TEMPLATE: c_ulong = 0x4000_0212;
/// `CKF_ARRAY_ATTRIBUTE | 0x213`.
pub(crate) const CKA_DERIVE_TEMPLATE: c_ulong = 0x4000_0213;

/// What an attribute-array attribute forces on the keys made under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Forced {
    /// `CKA_SENSITIVE=true` and `CKA_EXTRACTABLE=false`.
    pub secret: bool,
    /// `CKA_ALLOWED_MECHANISMS`, when the next step is known.
    pub allowed: Vec<MechanismType>,
}

/// A PKCS#11 template, together with the buffers its attribute arrays point to.
#[derive(Debug)]
pub(crate) struct Template {
    attrs: Vec<Attribute>,
    // Never read: it keeps alive the memory the array attributes point into.
    _pointees: Vec<Vec<u8>>,
}

impl Template {
    /// A template of plain attributes.
    pub fn new(attrs: Vec<Attribute>) -> Self {
        Self {
            attrs,
            _pointees: Vec::new(),
        }
    }

    /// The attributes, for the PKCS#11 call.
    pub fn attrs(&self) -> &[Attribute] {
        &self.attrs
    }

    /// Whether the template holds an attribute array.
    pub fn has_array(&self) -> bool {
        !self._pointees.is_empty()
    }

    /// Whether the template holds the attribute array `ty`.
    pub fn has(&self, ty: c_ulong) -> bool {
        self.attrs.iter().any(|a| {
            matches!(a, Attribute::VendorDefined((AttributeType::VendorDefined(t), _)) if *t == ty)
        })
    }

    /// Removes every attribute `drop` selects.
    pub fn without(mut self, drop: impl Fn(&Attribute) -> bool) -> Self {
        self.attrs.retain(|a| !drop(a));
        self
    }

    /// Removes the attribute arrays (for tokens that do not know them).
    pub fn without_arrays(mut self) -> Self {
        self.attrs.retain(|a| !is_array(a));
        self._pointees.clear();
        self
    }

    /// Adds the attribute array `ty` forcing `forced`. Returns the template
    /// unchanged on platforms where the C layout is not the one written
    /// here, or if the buffer the token reads is not aligned for it.
    pub fn with_array(self, ty: c_ulong, forced: &Forced) -> Self {
        let mut attrs = Vec::new();
        if forced.secret {
            attrs.push(Attribute::Sensitive(true));
            attrs.push(Attribute::Extractable(false));
        }
        if !forced.allowed.is_empty() {
            attrs.push(Attribute::AllowedMechanisms(forced.allowed.clone()));
        }
        self.with_array_of(ty, &attrs)
    }

    /// Adds the attribute array `ty` holding exactly `attrs` (booleans,
    /// class, key type and allowed mechanisms). Returns the template
    /// unchanged where the layout cannot be written (see [`Self::has`]).
    pub fn with_array_of(mut self, ty: c_ulong, attrs: &[Attribute]) -> Self {
        const WORD: usize = std::mem::size_of::<usize>();
        // CK_ATTRIBUTE is { CK_ULONG, void *, CK_ULONG }: three equal words,
        // no padding, wherever CK_ULONG is pointer-sized (LP64, ILP32).
        if std::mem::size_of::<c_ulong>() != WORD || cfg!(windows) {
            return self;
        }
        let mut array = Vec::with_capacity(attrs.len() * 3 * WORD);
        let mut pointees = Vec::with_capacity(attrs.len());
        for a in attrs {
            let value = raw_value(a);
            let ty = c_ulong::from(a.attribute_type());
            array.extend_from_slice(&ty.to_ne_bytes());
            array.extend_from_slice(&(value.as_ptr() as usize).to_ne_bytes());
            array.extend_from_slice(&(value.len() as c_ulong).to_ne_bytes());
            // Moving the Vec into the list does not move its heap buffer.
            pointees.push(value);
        }
        if !(array.as_ptr() as usize).is_multiple_of(WORD) {
            return self;
        }
        self.attrs.push(Attribute::VendorDefined((
            AttributeType::VendorDefined(ty),
            array,
        )));
        self._pointees.extend(pointees);
        self
    }
}

/// The value bytes of an attribute inside an attribute array, in the C
/// layout: `CK_ULONG`s for class, key type and mechanism lists, one byte
/// for a `CK_BBOOL`.
fn raw_value(a: &Attribute) -> Vec<u8> {
    let ulong = |v: c_ulong| v.to_ne_bytes().to_vec();
    match a {
        Attribute::Class(c) => ulong((*c).into()),
        Attribute::KeyType(k) => ulong((*k).into()),
        Attribute::AllowedMechanisms(m) => m
            .iter()
            .flat_map(|t| c_ulong::from(*t).to_ne_bytes())
            .collect(),
        Attribute::Decrypt(b)
        | Attribute::Sign(b)
        | Attribute::SignRecover(b)
        | Attribute::Encrypt(b)
        | Attribute::Verify(b)
        | Attribute::VerifyRecover(b)
        | Attribute::Wrap(b)
        | Attribute::Unwrap(b)
        | Attribute::Derive(b)
        | Attribute::Sensitive(b)
        | Attribute::Extractable(b)
        | Attribute::Modifiable(b)
        | Attribute::Copyable(b) => vec![u8::from(*b)],
        // Attribute arrays here hold only the attributes above.
        _ => Vec::new(),
    }
}

fn is_array(a: &Attribute) -> bool {
    matches!(
        a,
        Attribute::VendorDefined((AttributeType::VendorDefined(t), _))
            if *t == CKA_UNWRAP_TEMPLATE || *t == CKA_DERIVE_TEMPLATE
    )
}

#[cfg(test)]
#[allow(clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn array_entries_point_at_owned_values() {
        let forced = Forced {
            secret: true,
            allowed: vec![MechanismType::AES_KEY_WRAP],
        };
        let t =
            Template::new(vec![Attribute::Token(false)]).with_array(CKA_UNWRAP_TEMPLATE, &forced);
        let Some(Attribute::VendorDefined((AttributeType::VendorDefined(ty), bytes))) =
            t.attrs().last()
        else {
            panic!("no array attribute");
        };
        assert_eq!(*ty, CKA_UNWRAP_TEMPLATE);
        let w = std::mem::size_of::<usize>();
        assert_eq!(bytes.len(), 3 * 3 * w);
        let word = |i: usize| {
            let mut b = [0u8; 8];
            b[..w].copy_from_slice(&bytes[i * w..(i + 1) * w]);
            u64::from_ne_bytes(b)
        };
        assert_eq!(word(0), 0x103);
        assert_eq!(word(2), 1);
        assert_eq!(word(3), 0x162);
        assert_eq!(word(6), 0x4000_0600);
        assert_eq!(word(8), w as u64);
        // Each pointer names a buffer the template owns.
        for (i, p) in t._pointees.iter().enumerate() {
            assert_eq!(word(i * 3 + 1), p.as_ptr() as u64);
        }
        assert!(t.has_array());
        assert!(!t.without_arrays().has_array());
    }
}
