// Package scan finds known vulnerabilities (CVEs) in convoy's container
// images and decides whether an image may run: the deploy gate.
//
// Three parts, one way through:
//
//   - Inventory lists what an unpacked root filesystem holds: the OS (from
//     /etc/os-release), Debian and Ubuntu packages (/var/lib/dpkg/status
//     and the distroless /var/lib/dpkg/status.d/*), Alpine packages
//     (/lib/apk/db/installed), Go binaries (their embedded build
//     information: main module, dependencies, and the standard library as
//     package "stdlib") and Python distributions (*.dist-info/METADATA).
//     Every file is read through os.Root, so a symlink in an image can never
//     make convoy read a file of the host.
//   - DB is the vulnerability database under DATA/vulndb, imported by the
//     operator from OSV files (https://ossf.github.io/osv-schema/): single
//     JSON records, directories of them, or osv.dev's per-ecosystem all.zip;
//     and from NVD's JSON feeds, whose CVE ratings give a severity to
//     records that state none (Debian's). Machines are air-gapped, so
//     convoy downloads nothing.
//   - Scan matches the inventory against the database and returns a Report,
//     deciding each finding's severity then (the record's own, else NVD's
//     rating of its CVEs, and saying which);
//     Gate refuses a report with findings at or above a severity. Scanner
//     caches reports per (image digest, database version) for the daemon.
//
// Written by hand: the OSV record subset convoy needs, the event-range
// evaluation of the OSV schema, the streaming reader of NVD's rating in
// its 2.0 and 1.1 JSON files (nvd.go), and the parsers of os-release, dpkg status,
// apk's installed database and Python METADATA (each a few lines of
// key-value text, where a library would add more than it saves). Libraries
// supply what is easy to get wrong: Debian (and Ubuntu) version ordering
// (knqyf263/go-deb-version), Alpine's (knqyf263/go-apk-version), PEP 440's
// (aquasecurity/go-pep440-version), semantic versions (golang.org/x/mod/semver),
// CVSS base scores (pandatix/go-cvss), and Go build information
// (debug/buildinfo).
package scan
