package server

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/e2em/e2em/coord/api"
)

func TestTokenRoundTripAndRejections(t *testing.T) {
	key, cluster := []byte(strings.Repeat("k", 32)), []byte(strings.Repeat("c", 16))
	now := time.Now()
	tok, sess := MintToken(key, cluster, "alice101", now.Add(time.Hour))
	got, err := ParseToken(key, cluster, tok, now)
	if err != nil || got.LoginID != "alice101" || string(got.ID) != string(sess.ID) {
		t.Fatalf("valid token: %v %v", got, err)
	}
	if _, err := ParseToken(key, cluster, tok, now.Add(2*time.Hour)); err != ErrExpiredToken {
		t.Fatalf("expired token: %v", err)
	}
	otherKey := []byte(strings.Repeat("x", 32))
	if _, err := ParseToken(otherKey, cluster, tok, now); err != ErrBadToken {
		t.Fatalf("token of another cluster's key: %v", err)
	}
	if _, err := ParseToken(key, []byte(strings.Repeat("d", 16)), tok, now); err != ErrBadToken {
		t.Fatalf("token of another cluster id: %v", err)
	}
	forged := []byte(tok)
	forged[3] ^= 1
	if _, err := ParseToken(key, cluster, string(forged), now); err != ErrBadToken {
		t.Fatalf("forged token: %v", err)
	}
	// base64 decoding skips line breaks; a token spelled with one is not
	// the token (found by FuzzParseToken).
	broken := tok[:len(tok)-5] + "\n" + tok[len(tok)-5:]
	for _, bad := range []string{"", ".", "abc", tok + "x", strings.Repeat("a", 600), broken, "\r" + tok} {
		if _, err := ParseToken(key, cluster, bad, now); err == nil {
			t.Fatalf("%q accepted", bad)
		}
	}
}

func FuzzParseToken(f *testing.F) {
	key, cluster := []byte(strings.Repeat("k", 32)), []byte(strings.Repeat("c", 16))
	tok, _ := MintToken(key, cluster, "alice101", time.Unix(1<<40, 0))
	f.Add(tok)
	f.Add("")
	f.Add("a.b")
	f.Add("AQ.AQ")
	f.Fuzz(func(t *testing.T, s string) {
		sess, err := ParseToken(key, cluster, s, time.Unix(0, 0))
		if err != nil {
			return
		}
		// Only a token minted with the key verifies, and only in its one
		// canonical spelling.
		p, m, _ := strings.Cut(s, ".")
		enc := base64.RawURLEncoding
		payload, _ := enc.DecodeString(p)
		mac, _ := enc.DecodeString(m)
		if enc.EncodeToString(payload)+"."+enc.EncodeToString(mac) != s || sess.LoginID != "alice101" {
			t.Fatalf("accepted %q as %v", s, sess)
		}
	})
}

func TestPasswordHashing(t *testing.T) {
	h := HashPassword("correct horse")
	if !CheckPassword(h, "correct horse") || CheckPassword(h, "wrong horse") {
		t.Fatal("password check is wrong")
	}
	h2 := HashPassword("correct horse")
	if string(h.Salt) == string(h2.Salt) || string(h.Hash) == string(h2.Hash) {
		t.Fatal("salts must differ per hash")
	}
	h.MemoryKib = 1 << 30
	if CheckPassword(h, "correct horse") {
		t.Fatal("absurd parameters must not verify")
	}
}

func TestValidation(t *testing.T) {
	for _, bad := range []string{"", strings.Repeat("a", 65), "a\x00b", "a b", "tab\t", "a\u0085b", "x+y", "\xff"} {
		if ValidateUsername(bad) == nil {
			t.Errorf("username %q accepted", bad)
		}
	}
	for _, good := range []string{"alice", "Élodie", "a.b-c_d", strings.Repeat("a", 64), "b2b", "こんにちは世界", "Ωμέγα"} {
		if err := ValidateUsername(good); err != nil {
			t.Errorf("username %q refused: %v", good, err)
		}
	}
	for _, bad := range []string{"", "12-3", "१२", strings.Repeat("1", 33), "1 2"} {
		if ValidateRollNumber(bad) == nil {
			t.Errorf("roll number %q accepted", bad)
		}
	}
	for _, bad := range []string{"", "a b", "bell\a", strings.Repeat("g", 65)} {
		if ValidateGroupName(bad) == nil {
			t.Errorf("group name %q accepted", bad)
		}
	}
	if ValidateGroupName("study-group#1") != nil {
		t.Error("ordinary group name refused")
	}
	if api.ValidatePassword("short") == nil || api.ValidatePassword(strings.Repeat("p", 1025)) == nil || api.ValidatePassword("longenough") != nil {
		t.Error("password length rules")
	}
	if LoginID("Alice", "101") != "alice101" {
		t.Error("login id must join lower-cased username and roll number")
	}
}

// Issue 12, point 4: one login id, one person.
func TestLoginIDsCannotCollide(t *testing.T) {
	// alice+101 and alice1+01 were both alice101: a username may not end
	// in a digit, a roll number is only digits.
	if ValidateUsername("alice1") == nil {
		t.Error("a username ending in a digit was accepted")
	}
	if ValidateRollNumber("01a") == nil || ValidateRollNumber("abc") == nil {
		t.Error("a roll number with letters was accepted")
	}
	// Look-alikes: mixed writing systems are refused, widths and cases
	// fold to one spelling.
	for _, bad := range []string{"pаypal", "Αlice", "ǅ"} { // Cyrillic а; Greek Α; a titlecase digraph PRECIS refuses
		if ValidateUsername(bad) == nil {
			t.Errorf("look-alike username %q accepted", bad)
		}
	}
	for in, want := range map[string]string{"ＡＬＩＣＥ101": "alice101", "Alice101": "alice101", "ÉLODIE7": "élodie7", "e\u0301lodie7": "élodie7"} {
		if got := api.NormalizeLoginID(in); got != want {
			t.Errorf("NormalizeLoginID(%q) = %q, want %q", in, got, want)
		}
	}
	if ValidateUsername(strings.Repeat("é", 33)) == nil {
		t.Error("a 66-byte username was accepted: the limit is in bytes")
	}
}

// Issue 12, point 6: a name that holds the keys' separator is refused.
func TestGroupNamesCannotHoldKeySeparators(t *testing.T) {
	for _, bad := range []string{"a/b", "a/bob1", "/", "x/"} {
		if ValidateGroupName(bad) == nil {
			t.Errorf("group name %q accepted", bad)
		}
	}
}

// Issue 12, point 9: a watch ticket is for one watcher, one account, and
// a time.
func TestWatchTickets(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	now := time.Now()
	ticket := MintWatchTicket(key, "alice101", "bob102", now.Add(time.Hour))
	if !CheckWatchTicket(key, "alice101", "bob102", ticket, now) {
		t.Fatal("a good ticket was refused")
	}
	for name, ok := range map[string]bool{
		"another watcher": CheckWatchTicket(key, "mallory7", "bob102", ticket, now),
		"another account": CheckWatchTicket(key, "alice101", "carol103", ticket, now),
		"expired":         CheckWatchTicket(key, "alice101", "bob102", ticket, now.Add(2*time.Hour)),
		"another cluster": CheckWatchTicket(bytes.Repeat([]byte{8}, 32), "alice101", "bob102", ticket, now),
		"cut short":       CheckWatchTicket(key, "alice101", "bob102", ticket[:10], now),
	} {
		if ok {
			t.Errorf("a ticket for %s was accepted", name)
		}
	}
}

func TestDeviceTickets(t *testing.T) {
	key := bytes.Repeat([]byte{7}, 32)
	now := time.Now()
	ticket := MintDeviceTicket(key, "alice101", nil, now.Add(time.Hour))
	device := CheckDeviceTicket(key, "alice101", ticket, now)
	if len(device) != deviceIDLen {
		t.Fatal("a good ticket was refused")
	}
	// Renewing keeps the device; another device gets another id.
	renewed := MintDeviceTicket(key, "alice101", device, now.Add(2*time.Hour))
	if got := CheckDeviceTicket(key, "alice101", renewed, now.Add(90*time.Minute)); !bytes.Equal(got, device) {
		t.Fatalf("renewed ticket names %x, want %x", got, device)
	}
	if other := CheckDeviceTicket(key, "alice101", MintDeviceTicket(key, "alice101", nil, now.Add(time.Hour)), now); bytes.Equal(other, device) {
		t.Fatal("two devices got one id")
	}
	tampered := bytes.Clone(ticket)
	tampered[0] ^= 1
	for name, got := range map[string][]byte{
		"another account": CheckDeviceTicket(key, "bob102", ticket, now),
		"expired":         CheckDeviceTicket(key, "alice101", ticket, now.Add(2*time.Hour)),
		"another cluster": CheckDeviceTicket(bytes.Repeat([]byte{8}, 32), "alice101", ticket, now),
		"cut short":       CheckDeviceTicket(key, "alice101", ticket[:10], now),
		"tampered":        CheckDeviceTicket(key, "alice101", tampered, now),
	} {
		if got != nil {
			t.Errorf("a ticket for %s was accepted", name)
		}
	}
}

// FuzzDeviceTicket: whatever a client sends as its device ticket, only one
// minted with the key for that account names a device.
func FuzzDeviceTicket(f *testing.F) {
	key := bytes.Repeat([]byte{7}, 32)
	// A fixed device id: each fuzzing process makes its own seed.
	good := MintDeviceTicket(key, "alice101", bytes.Repeat([]byte{1}, deviceIDLen), time.Unix(1<<40, 0))
	f.Add(good)
	f.Add([]byte{})
	f.Add(make([]byte, deviceTicketLen))
	f.Fuzz(func(t *testing.T, ticket []byte) {
		device := CheckDeviceTicket(key, "alice101", ticket, time.Unix(0, 0))
		if device != nil && !bytes.Equal(ticket, good) {
			t.Fatalf("accepted %x", ticket)
		}
	})
}
