//! A test PKI: a CA and certificates it signed, made with rcgen in a temporary directory.

use std::path::PathBuf;

use shmbus::TlsClientFiles;

/// A CA, and certificates it signed, written to a directory.
pub struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    /// A CA with a server certificate for 127.0.0.1 and localhost, and a client certificate.
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Pki::issuer(dir.path(), "ca");
        let pki = Pki { dir, ca };
        pki.leaf(
            &pki.ca,
            "server",
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        );
        pki.client_certificate("client");
        // A client certificate from a CA the gateway does not know.
        let rogue = Pki::issuer(pki.dir.path(), "rogue-ca");
        pki.leaf(&rogue, "rogue", rcgen::ExtendedKeyUsagePurpose::ClientAuth);
        pki
    }

    /// A client certificate whose subject's common name is `name`, signed by the CA.
    pub fn client_certificate(&self, name: &str) {
        self.leaf(&self.ca, name, rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    }

    /// The file `name` in the PKI's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// [`Pki::path`] as a command-line argument.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }

    fn issuer(dir: &std::path::Path, name: &str) -> rcgen::Issuer<'static, rcgen::KeyPair> {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("shmbus test {name}"));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        rcgen::Issuer::new(params, key)
    }

    /// A certificate for 127.0.0.1 and localhost whose subject's common name is `name`, for
    /// `usages`, signed by the CA: `name.pem` and `name.key`.
    pub fn certificate(&self, name: &str, usages: &[rcgen::ExtendedKeyUsagePurpose]) {
        self.leaf_with(&self.ca, name, usages.to_vec());
    }

    fn leaf(
        &self,
        ca: &rcgen::Issuer<'static, rcgen::KeyPair>,
        name: &str,
        usage: rcgen::ExtendedKeyUsagePurpose,
    ) {
        self.leaf_with(ca, name, vec![usage]);
    }

    fn leaf_with(
        &self,
        ca: &rcgen::Issuer<'static, rcgen::KeyPair>,
        name: &str,
        usages: Vec<rcgen::ExtendedKeyUsagePurpose>,
    ) {
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.extended_key_usages = usages;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, ca).unwrap();
        std::fs::write(self.path(&format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    /// TLS settings of a client that trusts the CA and presents `who`'s certificate.
    pub fn client(&self, who: &str) -> TlsClientFiles {
        TlsClientFiles::default().ca(self.path("ca.pem")).identity(
            self.path(&format!("{who}.pem")),
            self.path(&format!("{who}.key")),
        )
    }
}
