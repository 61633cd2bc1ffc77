package command

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseClassicCommands(t *testing.T) {
	cases := []struct {
		line string
		want Command
	}{
		{"Sign up alice 101 correct-horse", Command{Kind: SignUp, Username: "alice", Roll: "101", Password: "correct-horse"}},
		{"sign UP alice 101 pw12345678", Command{Kind: SignUp, Username: "alice", Roll: "101", Password: "pw12345678"}},
		{"Login alice+101 pw", Command{Kind: Login, LoginID: "alice101", Password: "pw"}},
		{"LOGIN Alice101 pw", Command{Kind: Login, LoginID: "alice101", Password: "pw"}},
		{"Send bob102 hello  there, bob!", Command{Kind: Send, To: "bob102", Text: "hello  there, bob!"}},
		{"send <bob||102> hi", Command{Kind: Send, To: "bob||102", Text: "hi"}},
		{"Send_group 2 g1 g2 hi all", Command{Kind: SendGroup, Groups: []string{"g1", "g2"}, Text: "hi all"}},
		{"Send_group_File /tmp/a b.txt 1 g1", Command{Kind: SendGroupFile, Groups: []string{"g1"}, Path: "/tmp/a b.txt"}},
		{"Send_group_File payload.bin 2 g1 g2", Command{Kind: SendGroupFile, Groups: []string{"g1", "g2"}, Path: "payload.bin"}},
		{"Send_group_File 3 copies.pdf 1 g1", Command{Kind: SendGroupFile, Groups: []string{"g1"}, Path: "3 copies.pdf"}},
		{`Send_group_File "my 2 files.zip" 2 g1 g2`, Command{Kind: SendGroupFile, Groups: []string{"g1", "g2"}, Path: "my 2 files.zip"}},
		{"Send_file notes.txt bob102", Command{Kind: SendFile, To: "bob102", Path: "notes.txt"}},
		{"Send_file my notes.txt bob+102", Command{Kind: SendFile, To: "bob102", Path: "my notes.txt"}},
		{`Send_file "/tmp/x y.txt" <bob||102>`, Command{Kind: SendFile, To: "bob||102", Path: "/tmp/x y.txt"}},
		{"Transfers", Command{Kind: Transfers}},
		{"Cancel 3F2A9B", Command{Kind: Cancel, To: "3f2a9b"}},
		{"Create g1", Command{Kind: Create, Groups: []string{"g1"}}},
		{"join G1", Command{Kind: Join, Groups: []string{"G1"}}},
		{"Show_my_groups", Command{Kind: ShowMyGroups}},
		{"list", Command{Kind: List}},
		{"History bob102 5", Command{Kind: History, To: "bob102", Count: 5}},
		{"History g1", Command{Kind: History, To: "g1", Count: 20}},
		{"Search lunch plans", Command{Kind: Search, Text: "lunch plans"}},
		{"Verify bob102", Command{Kind: Verify, To: "bob102"}},
		{"Trust bob102 12345 67890", Command{Kind: Trust, To: "bob102", Text: "12345 67890"}},
		{"Quit", Command{Kind: Quit}},
	}
	for _, c := range cases {
		got, err := Parse(c.line)
		if err != nil {
			t.Errorf("%q: %v", c.line, err)
			continue
		}
		if !reflect.DeepEqual(*got, c.want) {
			t.Errorf("%q:\n got %+v\nwant %+v", c.line, *got, c.want)
		}
	}
}

func TestBadLinesGetUsage(t *testing.T) {
	for _, line := range []string{
		"Sign up alice 101", "Login alice", "Send bob102", "Send", "Send_group 3 g1 g2 hi",
		"Send_group x g1 hi", "Send_group 2 g1 g2", "Create", "Create two words", "History",
		"History bob 0", "List extra", "Frobnicate now", "Sign in alice",
		"Send + 0", "Login + pw", "Verify <>", // found by FuzzParse
		"Trust bob102", "Trust bob102 12345-67890",
		"Send_file", "Send_file a.pdf", `Send_file "a.pdf bob102`, "Send_group_File a.pdf", "Send_group_File a.pdf 2 g1",
		"Send_group_File 2 g1 g2 a.pdf", "Send_group_File 1 g1 a.pdf", "Cancel", "Cancel a b", "Transfers now",
	} {
		_, err := Parse(line)
		var ue *UsageError
		if !errors.As(err, &ue) {
			t.Errorf("%q: want a usage error, got %v", line, err)
			continue
		}
		if strings.HasPrefix(strings.ToLower(line), "frob") || strings.HasPrefix(line, "Sign in") {
			if !strings.Contains(ue.Error(), "Help") {
				t.Errorf("%q: unknown command should point to Help: %v", line, ue)
			}
		} else if ue.Usage == "" {
			t.Errorf("%q: no usage line in %v", line, ue)
		}
	}
	if _, err := Parse("   "); err != ErrEmpty {
		t.Errorf("blank line: %v", err)
	}
}

func TestAlternatives(t *testing.T) {
	if got := Alternatives("bob||102"); !reflect.DeepEqual(got, []string{"bob", "102"}) {
		t.Fatal(got)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"Sign up a 1 password1", "Send bob hi", "Send_group 2 a b hi", "History x 3", "sign", "Send_group 99999999999999999999 a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		c, err := Parse(line)
		if err != nil {
			return
		}
		if c.Kind < SignUp || c.Kind > Quit {
			t.Fatalf("kind %d", c.Kind)
		}
		if (c.Kind == SendGroup || c.Kind == SendGroupFile) && len(c.Groups) == 0 {
			t.Fatal("group command without groups")
		}
		if c.Kind == Send && (c.To == "" || c.Text == "") {
			t.Fatal("send without recipient or text")
		}
	})
}

// The order this program's first versions taught is answered with the
// right one, never guessed.
func TestReversedFileCommandsGetTheRightSyntax(t *testing.T) {
	_, err := Parse("Send_group_File 2 g1 g2 report.pdf")
	var ue *UsageError
	if !errors.As(err, &ue) || !strings.Contains(ue.Error(), "the file comes first") || ue.Usage != "Send_group_File <file> <n> <group1> ... <groupN>" {
		t.Fatalf("reversed Send_group_File: %v", err)
	}
}
