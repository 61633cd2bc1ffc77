package e2e

import (
	"bytes"
	"crypto/sha512"
	"encoding/binary"
	"fmt"
	"strings"
)

// SafetyNumber is what two people compare out of band to know that neither
// key was swapped: 60 digits in twelve groups of five, the same on both
// sides. Each half is a slow hash (5200 rounds of SHA-512, as Signal does)
// of one login id and identity key; the halves are ordered so the result
// does not depend on who computes it.
func SafetyNumber(a, b Party) string {
	fa, fb := fingerprint(a), fingerprint(b)
	if bytes.Compare([]byte(a.LoginID), []byte(b.LoginID)) > 0 {
		fa, fb = fb, fa
	}
	return fa + " " + fb
}

func fingerprint(p Party) string {
	h := sha512.New()
	h.Write([]byte("e2em safety number v1"))
	h.Write(p.Identity)
	h.Write([]byte(p.LoginID))
	sum := h.Sum(nil)
	for i := 0; i < 5200; i++ {
		h.Reset()
		h.Write(sum)
		h.Write(p.Identity)
		sum = h.Sum(sum[:0])
	}
	groups := make([]string, 6)
	for i := range groups {
		var chunk [8]byte
		copy(chunk[3:], sum[i*5:i*5+5])
		groups[i] = fmt.Sprintf("%05d", binary.BigEndian.Uint64(chunk[:])%100000)
	}
	return strings.Join(groups, " ")
}
