//! `fleet-provision bundle show|hex|export`: an identity bundle inspected or converted.

use std::path::Path;

use fleet_protocol::bundle::Bundle;
use fleet_provision::{boards, bundle_to_pem, write_file, Error};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::BundleCommand;

pub(crate) fn read_bundle(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

/// `bundle show|hex|export`
pub(crate) fn bundle(command: BundleCommand) -> Result<(), Error> {
    let path = match &command {
        BundleCommand::Show { file }
        | BundleCommand::Export { file, .. }
        | BundleCommand::Hex { file, .. } => file.clone(),
    };
    let bytes = read_bundle(&path)?;
    let b = Bundle::parse(&bytes).map_err(|error| Error::BundleFile {
        path: path.clone(),
        error,
    })?;
    match command {
        BundleCommand::Show { .. } => {
            bundle_show(&b);
            Ok(())
        }
        BundleCommand::Hex {
            board, slot, out, ..
        } => bundle_hex(&path, &bytes, &board, &slot, &out),
        BundleCommand::Export { cert, key, .. } => bundle_export(&b, &cert, &key),
    }
}

/// `bundle show`: a bundle's fields, never the key.
fn bundle_show(b: &Bundle<'_>) {
    println!("device id      {}", b.device_id);
    println!("tenant         {}", b.tenant);
    println!("generation     {}", b.generation);
    println!("gateway        {}:{}", b.gateway_host, b.gateway_port);
    println!(
        "private key    {}",
        if b.private_key_der.is_some() {
            "present (not shown)"
        } else {
            "absent (secure element)"
        }
    );
    match X509Certificate::from_der(b.cert_der) {
        Ok((_, cert)) => {
            println!("subject        {}", cert.subject());
            println!("issuer         {}", cert.issuer());
            println!("serial         {}", hex::encode(cert.raw_serial()));
            println!(
                "valid          {} .. {}",
                cert.validity().not_before,
                cert.validity().not_after
            );
        }
        Err(e) => println!("certificate    unparsable: {e}"),
    }
}

/// `bundle hex`
fn bundle_hex(path: &Path, bytes: &[u8], board: &str, slot: &str, out: &Path) -> Result<(), Error> {
    let board = boards::board(board)?;
    let slot = match slot.to_ascii_lowercase().as_str() {
        "a" => boards::Slot::A,
        "b" => boards::Slot::B,
        other => {
            return Err(Error::InvalidInput {
                field: "slot",
                message: format!("{other:?} is not a or b"),
            })
        }
    };
    write_file(out, boards::to_ihex(bytes, board, slot)?.as_bytes(), true)?;
    println!(
        "{} for {} written to {}",
        path.display(),
        board.name,
        out.display()
    );
    Ok(())
}

/// `bundle export`
fn bundle_export(b: &Bundle<'_>, cert: &Path, key: &Path) -> Result<(), Error> {
    let (cert_pem, key_pem) = bundle_to_pem(b)?;
    write_file(cert, cert_pem.as_bytes(), false)?;
    write_file(key, key_pem.as_bytes(), true)?;
    println!("certificate {}", cert.display());
    println!("private key {} (mode 0600)", key.display());
    Ok(())
}
