#!/bin/bash
# Make throwaway TLS credentials for the NBD TLS tests and the benchmark,
# with openssl(1), in the layouts the NBD tools use:
#   DIR/server/  ca-cert.pem server-cert.pem server-key.pem   (qemu endpoint=server,
#                                                              vdisk serve --tls-certs)
#   DIR/client/  ca-cert.pem client-cert.pem client-key.pem   (qemu endpoint=client,
#                CN=client1, signed by the CA                  libnbd tls-certificates=)
#   DIR/client2/ the same, CN=client2 (trusted, not allowed by --tls-allow client1)
#   DIR/evil/    ca-cert.pem (the real CA, to trust the server) and a client
#                certificate CN=client1 signed by another CA
#   DIR/noclient/ ca-cert.pem only (a client without a certificate)
#   DIR/keys.psk    alice:<random 32 bytes> and bob:<another>  (nbdkit / libnbd /
#                   psktool format)
#   DIR/bob.psk     bob's line alone (a client's copy)
#   DIR/wrong.psk   alice:<another key>
#   DIR/unknown.psk mallory:<a key>
#   DIR/qpsk-*/keys.psk  the same files where qemu's tls-creds-psk dir= wants them
# The server certificate names 127.0.0.1, ::1 and localhost.
#
# usage: tls-creds.sh DIR
set -euo pipefail
D=$1
mkdir -p "$D"/{ca,evilca,server,client,client2,evil,noclient,qpsk-ok,qpsk-wrong,qpsk-unknown}
cd "$D"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out "$1" 2>/dev/null; }
ca() { # DIR CN
    key "$1/ca-key.pem"
    openssl req -x509 -new -key "$1/ca-key.pem" -out "$1/ca-cert.pem" -days 2 -subj "/CN=$2" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
        2>/dev/null
}
leaf() { # CA_DIR KEY CERT SUBJ EXT
    key "$2"
    openssl req -new -key "$2" -subj "$4" -out "$2.csr" 2>/dev/null
    printf '%b' "$5" >"$2.ext"
    openssl x509 -req -in "$2.csr" -CA "$1/ca-cert.pem" -CAkey "$1/ca-key.pem" \
        -CAcreateserial -out "$3" -days 2 -extfile "$2.ext" 2>/dev/null
    rm -f "$2.csr" "$2.ext"
}
ca ca "nbd test CA"
ca evilca "someone else's CA"
SEXT='basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n'
CEXT='basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n'
leaf ca server/server-key.pem server/server-cert.pem "/O=clusterfs test/CN=localhost" "$SEXT"
leaf ca client/client-key.pem client/client-cert.pem "/O=clusterfs test/CN=client1" "$CEXT"
leaf ca client2/client-key.pem client2/client-cert.pem "/O=clusterfs test/CN=client2" "$CEXT"
leaf evilca evil/client-key.pem evil/client-cert.pem "/O=clusterfs test/CN=client1" "$CEXT"
for d in server client client2 evil noclient; do cp ca/ca-cert.pem $d/; done
printf 'alice:%s\n' "$(openssl rand -hex 32)" >keys.psk
printf 'bob:%s\n' "$(openssl rand -hex 32)" >bob.psk
cat bob.psk >>keys.psk
printf 'alice:%s\n' "$(openssl rand -hex 32)" >wrong.psk
printf 'mallory:%s\n' "$(openssl rand -hex 32)" >unknown.psk
cp keys.psk qpsk-ok/keys.psk
cp wrong.psk qpsk-wrong/keys.psk
cp unknown.psk qpsk-unknown/keys.psk
chmod 600 ./*.psk qpsk-*/keys.psk ./*/*-key.pem
