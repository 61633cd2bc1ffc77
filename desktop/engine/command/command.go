// Package command owns the classic command language: one parser for the
// desktop's command bar and the headless client. Command names are case
// insensitive; a message is the rest of the line, spaces and all.
package command

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
)

// Kind names a command.
type Kind int

// The commands.
const (
	SignUp Kind = iota + 1
	Login
	Send
	SendFile
	SendGroup
	SendGroupFile
	Create
	Join
	Leave
	Members
	ShowMyGroups
	List
	History
	Search
	Verify
	Trust
	Logout
	Help
	Quit
)

// Command is one parsed line.
type Command struct {
	Kind     Kind
	Username string   // Sign up
	Roll     string   // Sign up
	LoginID  string   // Login
	Password string   // Sign up, Login
	To       string   // Send, Send_file, History, Verify, Trust (a contact)
	Groups   []string // Send_group*, and the one group of Create/Join/Leave/Members
	Text     string   // Send*, Search: the rest of the line
	Path     string   // Send_file, Send_group_File
	Count    int      // History
}

// Usage is the one-line syntax of each command, as Help prints it.
var Usage = map[Kind]string{
	SignUp:        "Sign up <username> <rollnumber> <password>",
	Login:         "Login <username+rollnumber> <password>",
	Send:          "Send <recipient> <message>",
	SendFile:      "Send_file <recipient> <path>",
	SendGroup:     "Send_group <n> <group1> ... <groupN> <message>",
	SendGroupFile: "Send_group_File <n> <group1> ... <groupN> <path>",
	Create:        "Create <group>",
	Join:          "Join <group>",
	Leave:         "Leave <group>",
	Members:       "Members <group>",
	ShowMyGroups:  "Show_my_groups",
	List:          "List",
	History:       "History <contact|group> [n]",
	Search:        "Search <text>",
	Verify:        "Verify <contact>",
	Trust:         "Trust <contact>",
	Logout:        "Logout",
	Help:          "Help",
	Quit:          "Quit",
}

// Order is how Help lists the commands.
var Order = []Kind{SignUp, Login, Send, SendGroup, Create, Join, Leave, Members, ShowMyGroups, List,
	History, Search, Verify, Trust, SendFile, SendGroupFile, Logout, Help, Quit}

var names = map[string]Kind{
	"login": Login, "send": Send, "send_file": SendFile, "send_group": SendGroup,
	"send_group_file": SendGroupFile, "create": Create, "join": Join, "leave": Leave,
	"members": Members, "show_my_groups": ShowMyGroups, "list": List, "history": History,
	"search": Search, "verify": Verify, "trust": Trust, "logout": Logout, "help": Help,
	"quit": Quit, "exit": Quit,
}

// MaxLine bounds one command line (a message is at most this long).
const MaxLine = 64 << 10

// UsageError says what was wrong and how the command is written.
type UsageError struct {
	Problem string
	Usage   string
}

func (e *UsageError) Error() string {
	if e.Usage == "" {
		return e.Problem
	}
	return e.Problem + "; usage: " + e.Usage
}

// ErrEmpty is returned for a blank line.
var ErrEmpty = errors.New("empty line")

// Parse reads one line.
func Parse(line string) (*Command, error) {
	line = strings.TrimRight(line, "\r\n")
	if len(line) > MaxLine {
		return nil, &UsageError{Problem: fmt.Sprintf("the line is longer than %d bytes", MaxLine)}
	}
	if strings.TrimSpace(line) == "" {
		return nil, ErrEmpty
	}
	word, rest := next(line)
	lower := strings.ToLower(word)
	var kind Kind
	if lower == "sign" {
		w2, r2 := next(rest)
		if strings.ToLower(w2) != "up" {
			return nil, unknown(word)
		}
		kind, rest = SignUp, r2
	} else if lower == "signup" || lower == "sign_up" {
		kind = SignUp
	} else if k, ok := names[lower]; ok {
		kind = k
	} else {
		return nil, unknown(word)
	}
	c := &Command{Kind: kind}
	bad := func(problem string) (*Command, error) {
		return nil, &UsageError{Problem: problem, Usage: Usage[kind]}
	}
	args := strings.Fields(rest)
	switch kind {
	case SignUp:
		if len(args) != 3 {
			return bad("give a username, a roll number and a password")
		}
		c.Username, c.Roll, c.Password = args[0], args[1], args[2]
	case Login:
		if len(args) != 2 {
			return bad("give your login id and password")
		}
		c.LoginID, c.Password = NormalizeRecipient(args[0]), args[1]
		if c.LoginID == "" {
			return bad("give your login id and password")
		}
	case Send:
		to, text := next(rest)
		if NormalizeRecipient(to) == "" || strings.TrimSpace(text) == "" {
			return bad("give a recipient and a message")
		}
		c.To, c.Text = NormalizeRecipient(to), strings.TrimLeftFunc(text, unicode.IsSpace)
	case SendFile:
		if len(args) < 2 {
			return bad("give a recipient and a file")
		}
		to, path := next(rest)
		if NormalizeRecipient(to) == "" {
			return bad("give a recipient and a file")
		}
		c.To, c.Path = NormalizeRecipient(to), strings.TrimSpace(path)
	case SendGroup, SendGroupFile:
		nWord, after := next(rest)
		n, err := strconv.Atoi(nWord)
		if err != nil || n < 1 || n > 64 {
			return bad("the first argument is how many groups follow (1 to 64)")
		}
		for i := 0; i < n; i++ {
			var g string
			g, after = next(after)
			if g == "" {
				return bad(fmt.Sprintf("%d groups announced, %d given", n, i))
			}
			c.Groups = append(c.Groups, g)
		}
		if strings.TrimSpace(after) == "" {
			if kind == SendGroup {
				return bad("give the message after the groups")
			}
			return bad("give the file after the groups")
		}
		if kind == SendGroup {
			c.Text = strings.TrimLeftFunc(after, unicode.IsSpace)
		} else {
			c.Path = strings.TrimSpace(after)
		}
	case Create, Join, Leave, Members:
		if len(args) != 1 {
			return bad("give one group name (no spaces)")
		}
		c.Groups = []string{args[0]}
	case History:
		if len(args) < 1 || len(args) > 2 {
			return bad("give a contact or group, and optionally how many messages")
		}
		c.To, c.Count = NormalizeRecipient(args[0]), 20
		if c.To == "" {
			return bad("give a contact or group")
		}
		if len(args) == 2 {
			n, err := strconv.Atoi(args[1])
			if err != nil || n < 1 || n > 10000 {
				return bad("the count must be a number from 1 to 10000")
			}
			c.Count = n
		}
	case Search:
		if strings.TrimSpace(rest) == "" {
			return bad("give the text to look for")
		}
		c.Text = strings.TrimSpace(rest)
	case Verify, Trust:
		if len(args) != 1 || NormalizeRecipient(args[0]) == "" {
			return bad("give one contact")
		}
		c.To = NormalizeRecipient(args[0])
	case ShowMyGroups, List, Logout, Help, Quit:
		if len(args) != 0 {
			return bad("this command takes no arguments")
		}
	}
	return c, nil
}

func unknown(word string) error {
	return &UsageError{Problem: fmt.Sprintf("unknown command %q; type Help for the list", word)}
}

// next splits off the first space-separated word; the rest keeps its inner
// spacing but loses the one separator.
func next(s string) (word, rest string) {
	s = strings.TrimLeftFunc(s, unicode.IsSpace)
	i := strings.IndexFunc(s, unicode.IsSpace)
	if i < 0 {
		return s, ""
	}
	rest = s[i:]
	if len(rest) > 0 {
		rest = rest[1:]
	}
	return s[:i], rest
}

// NormalizeRecipient accepts the original program's spellings of a
// person: "alice+101" is the login id alice101 (usernames cannot contain
// '+'), and "<alice||101>" or "alice||101" names one by username or roll
// number, whichever matches. Angle brackets around a name are dropped.
func NormalizeRecipient(s string) string {
	s = strings.TrimSuffix(strings.TrimPrefix(s, "<"), ">")
	if strings.Contains(s, "+") {
		s = strings.ReplaceAll(s, "+", "")
	}
	return strings.ToLower(s)
}

// Alternatives splits "alice||101" into the names it offers.
func Alternatives(s string) []string {
	var out []string
	for _, p := range strings.Split(s, "||") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// HelpText lists every command's syntax.
func HelpText() string {
	var b strings.Builder
	for _, k := range Order {
		b.WriteString(Usage[k])
		b.WriteByte('\n')
	}
	return b.String()
}
