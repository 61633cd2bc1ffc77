package ui

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/driver/desktop"
	"fyne.io/fyne/v2/storage"
	"fyne.io/fyne/v2/test"
	"fyne.io/fyne/v2/widget"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/e2em/e2em/desktop/engine"
	"github.com/e2em/e2em/desktop/engine/command"
)

// fakeEngine is the engine as the window sees it, in memory.
type fakeEngine struct {
	login    string
	changed  map[string]bool     // contacts whose key changed
	groups   map[string][]string // group → members
	accounts map[string]string   // login id → password
	messages map[string][]engine.Message
	read     map[string]int
	did      []string
}

func newFake() *fakeEngine {
	return &fakeEngine{accounts: map[string]string{"alice101": "pw"}, messages: map[string][]engine.Message{}, read: map[string]int{}, changed: map[string]bool{},
		groups: map[string][]string{"chess": {"bob102", "cat103"}, "choir": {"bob102"}, "maths": {"dan104"}}}
}

func (f *fakeEngine) LoginID() string { return f.login }

func (f *fakeEngine) SignUp(_ context.Context, user, roll, pw string) (string, error) {
	id := user + roll
	if _, ok := f.accounts[id]; ok {
		return "", &engine.Error{Kind: engine.KindExists, Msg: fmt.Sprintf("username %q is taken", user)}
	}
	f.accounts[id] = pw
	return id, nil
}

func (f *fakeEngine) Login(_ context.Context, id, pw string) error {
	if f.accounts[id] != pw || pw == "" {
		return &engine.Error{Kind: engine.KindUnauthenticated, Msg: "wrong login id or password", Err: status.Error(codes.Unauthenticated, "x")}
	}
	f.login = id
	return nil
}

func (f *fakeEngine) Do(_ context.Context, c *command.Command) (engine.Result, error) {
	f.did = append(f.did, command.Usage[c.Kind])
	if c.Kind == command.Send {
		f.add("@"+c.To, engine.Message{From: f.login, Body: c.Text, Outgoing: true, State: engine.StateSent}, c.To, "")
		return engine.Result{Command: "Send", Text: "Message Sent!"}, nil
	}
	if c.Kind == command.Join {
		return engine.Result{}, &engine.Error{Kind: engine.KindNotFound, Msg: "there is no group \"" + c.Groups[0] + "\""}
	}
	return engine.Result{Command: "List", Text: "g1 : 3"}, nil
}

func (f *fakeEngine) add(conv string, m engine.Message, peer, group string) {
	m.Seq = uint64(len(f.messages[conv]) + 1)
	m.Peer, m.Group, m.Sent = peer, group, time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	f.messages[conv] = append(f.messages[conv], m)
}

func (f *fakeEngine) Send(_ context.Context, to, text string) (string, error) {
	f.add("@"+to, engine.Message{From: f.login, Body: text, Outgoing: true, State: engine.StateQueued}, to, "")
	return "id", nil
}

func (f *fakeEngine) SendGroup(_ context.Context, groups []string, text string) (int, error) {
	f.did = append(f.did, "SendGroup "+strings.Join(groups, ",")+" "+text)
	f.add("#"+groups[0], engine.Message{From: f.login, Body: text, Outgoing: true}, "", groups[0])
	return 2, nil
}

func (f *fakeEngine) Conversations() ([]engine.Conversation, error) {
	var out []engine.Conversation
	for id, ms := range f.messages {
		c := engine.Conversation{ID: id, Unread: 0, Presence: engine.PresenceDirect}
		last := ms[len(ms)-1]
		c.Last = &last
		for _, m := range ms[f.read[id]:] {
			if !m.Outgoing {
				c.Unread++
			}
		}
		if strings.HasPrefix(id, "@") {
			c.Peer = id[1:]
			c.KeyChanged = f.changed[c.Peer]
		} else {
			c.Group = id[1:]
		}
		out = append(out, c)
	}
	return out, nil
}

func (f *fakeEngine) HistoryPage(conv string, before uint64, n int) ([]engine.Message, error) {
	ms := f.messages[conv]
	end := len(ms)
	if before > 0 {
		end = int(before) - 1
	}
	start := max(0, end-n)
	return append([]engine.Message(nil), ms[start:end]...), nil
}

func (f *fakeEngine) MarkRead(conv string) error { f.read[conv] = len(f.messages[conv]); return nil }

func (f *fakeEngine) SendFile(_ context.Context, path, to string) (string, error) {
	f.did = append(f.did, "SendFile "+path+" "+to)
	return "t1", nil
}

func (f *fakeEngine) SendGroupFile(_ context.Context, path string, groups ...string) (string, error) {
	f.did = append(f.did, "SendGroupFile "+path+" "+strings.Join(groups, ","))
	return "t2", nil
}

func (f *fakeEngine) ListGroups(context.Context) ([]engine.Group, error) {
	var out []engine.Group
	for name, members := range f.groups {
		out = append(out, engine.Group{Name: name, Members: len(members)})
	}
	return out, nil
}

func (f *fakeEngine) MyGroups(ctx context.Context) ([]engine.Group, error) {
	all, _ := f.ListGroups(ctx)
	var out []engine.Group
	for _, g := range all {
		for _, m := range f.groups[g.Name] {
			if m == f.login {
				out = append(out, g)
			}
		}
	}
	return out, nil
}

func (f *fakeEngine) CreateGroup(_ context.Context, name string) (string, error) {
	if _, ok := f.groups[name]; ok {
		return "", &engine.Error{Kind: engine.KindExists, Msg: fmt.Sprintf("group %q already exists", name)}
	}
	f.groups[name] = []string{f.login}
	return name, nil
}

func (f *fakeEngine) JoinGroup(_ context.Context, name string) (string, error) {
	f.groups[name] = append(f.groups[name], f.login)
	return name, nil
}

func (f *fakeEngine) LeaveGroup(_ context.Context, name string) (string, error) {
	var rest []string
	for _, m := range f.groups[name] {
		if m != f.login {
			rest = append(rest, m)
		}
	}
	f.groups[name] = rest
	return name, nil
}

func (f *fakeEngine) Members(_ context.Context, name string) (string, []string, error) {
	return name, f.groups[name], nil
}

func (f *fakeEngine) Search(text string, limit int) ([]engine.Message, error) {
	var out []engine.Message
	for _, ms := range f.messages {
		for _, m := range ms {
			if strings.Contains(strings.ToLower(m.Body), strings.ToLower(text)) {
				out = append(out, m)
			}
		}
	}
	return out, nil
}

func (f *fakeEngine) Downloads() string { return "/home/alice/.e2em/profile/downloads" }

func (f *fakeEngine) SafetyNumber(_ context.Context, contact string) (string, error) {
	return "12345 67890 12345 67890 12345 67890 12345 67890 12345 67890 12345 67890", nil
}

func (f *fakeEngine) Trust(_ context.Context, contact, safetyNumber string) error {
	delete(f.changed, contact)
	f.did = append(f.did, "Trust "+contact+" "+safetyNumber)
	return nil
}

func (f *fakeEngine) Cancel(_ context.Context, id string) (engine.Transfer, error) {
	f.did = append(f.did, "Cancel "+id)
	return engine.Transfer{ID: id, State: engine.TransferCancelled}, nil
}

func newTestApp(t *testing.T, f *fakeEngine) *App {
	t.Helper()
	a := test.NewTempApp(t)
	app := New(a, f, nil)
	app.inline = true
	app.win.Resize(fyne.NewSize(960, 640))
	return app
}

func TestLogInErrorsInPlainWords(t *testing.T) {
	f := newFake()
	app := newTestApp(t, f)
	l := app.login
	test.Tap(l.loginButton)
	if l.status.Text != "Give your login id and password." {
		t.Fatalf("empty form: %q", l.status.Text)
	}
	test.Type(l.loginID, "alice+101")
	test.Type(l.password, "wrong")
	test.Tap(l.loginButton)
	if l.status.Text != "wrong login id or password: check the login id and password" {
		t.Fatalf("wrong password: %q", l.status.Text)
	}
	l.password.SetText("pw")
	test.Tap(l.loginButton)
	if f.login != "alice101" || app.win.Content() != app.chats.content {
		t.Fatalf("after a good log-in: %q, chats shown %v", f.login, app.win.Content() == app.chats.content)
	}
	if got := app.fyne.Preferences().String(prefLastLogin); got != "alice101" {
		t.Fatalf("the last login id is not remembered: %q", got)
	}
	// A new window starts with it filled in.
	if again := New(app.fyne, newFake(), nil); again.login.loginID.Text != "alice101" {
		t.Fatalf("the next window starts with %q", again.login.loginID.Text)
	}
}

func TestSignUpChecksThePasswordsAndFillsTheLogIn(t *testing.T) {
	f := newFake()
	app := newTestApp(t, f)
	l := app.login
	test.Type(l.username, "bob")
	test.Type(l.roll, "102")
	test.Type(l.newPassword, "secret")
	test.Type(l.confirm, "secreT")
	test.Tap(l.signUpButton)
	if l.status.Text != "The two passwords differ." {
		t.Fatalf("%q", l.status.Text)
	}
	l.confirm.SetText("secret")
	test.Tap(l.signUpButton)
	if l.loginID.Text != "bob102" || !strings.Contains(l.status.Text, "Your login id is bob102") {
		t.Fatalf("after signing up: %q, %q", l.loginID.Text, l.status.Text)
	}
	l.newPassword.SetText("secret") // the same again
	l.confirm.SetText("secret")
	test.Tap(l.signUpButton)
	if !strings.Contains(l.status.Text, `username "bob" is taken`) {
		t.Fatalf("a taken name: %q", l.status.Text)
	}
}

func loggedIn(t *testing.T) (*fakeEngine, *App) {
	f := newFake()
	f.login = "alice101"
	return f, newTestApp(t, f)
}

// A message that arrives shows in the list with its unread count; opening
// the conversation shows it and clears the count.
func TestNewMessageUpdatesTheListAndUnread(t *testing.T) {
	f, app := loggedIn(t)
	f.add("@bob102", engine.Message{From: "bob102", Body: "hello alice"}, "bob102", "")
	f.add("@bob102", engine.Message{From: "bob102", Body: "are you there?"}, "bob102", "")
	app.handle(engine.Event{Kind: engine.EventMessage, From: "bob102"})
	c := app.chats
	if len(c.convs) != 1 || c.convs[0].Unread != 2 {
		t.Fatalf("conversations: %+v", c.convs)
	}
	row := c.list.CreateItem()
	c.list.UpdateItem(0, row)
	texts := row.(*fyne.Container).Objects[0].(*fyne.Container).Objects
	if got := texts[0].(*widget.Label).Text; got != "● bob102" {
		t.Fatalf("title %q", got)
	}
	if got := texts[1].(*widget.Label).Text; got != "bob102: are you there?" {
		t.Fatalf("last line %q", got)
	}
	if got := row.(*fyne.Container).Objects[1].(*widget.Label).Text; got != "(2)" {
		t.Fatalf("badge %q", got)
	}
	c.list.Select(0)
	if c.convs[0].Unread != 0 || len(c.view.messages) != 2 || c.view.messages[1].Body != "are you there?" {
		t.Fatalf("after opening: %+v, %d messages shown", c.convs[0], len(c.view.messages))
	}
	// One more while it is open: shown, and not counted unread.
	f.add("@bob102", engine.Message{From: "bob102", Body: "ok, later"}, "bob102", "")
	app.handle(engine.Event{Kind: engine.EventMessage, From: "bob102"})
	if c.convs[0].Unread != 0 || len(c.view.messages) != 3 {
		t.Fatalf("a message into the open conversation: %+v, %d shown", c.convs[0], len(c.view.messages))
	}
}

// In the composer Enter sends, Shift+Enter starts a new line.
func TestComposerEnterSendsShiftEnterBreaks(t *testing.T) {
	f, app := loggedIn(t)
	f.add("@bob102", engine.Message{From: "bob102", Body: "hi"}, "bob102", "")
	app.chats.reload()
	app.chats.list.Select(0)
	comp := app.chats.view.composer
	test.Type(comp, "first line")
	comp.KeyDown(&fyne.KeyEvent{Name: desktop.KeyShiftLeft})
	comp.TypedKey(&fyne.KeyEvent{Name: fyne.KeyReturn})
	comp.KeyUp(&fyne.KeyEvent{Name: desktop.KeyShiftLeft})
	test.Type(comp, "second line")
	if comp.Text != "first line\nsecond line" {
		t.Fatalf("composer holds %q", comp.Text)
	}
	comp.TypedKey(&fyne.KeyEvent{Name: fyne.KeyReturn})
	ms := f.messages["@bob102"]
	if last := ms[len(ms)-1]; last.Body != "first line\nsecond line" || !last.Outgoing {
		t.Fatalf("sent %+v", last)
	}
	if comp.Text != "" {
		t.Fatalf("the composer kept %q", comp.Text)
	}
	if v := app.chats.view; len(v.messages) != 2 || metaLine(v.messages[1]) != "Dec 2 10:00 · you · queued" {
		t.Fatalf("the view shows %d messages, the last %q", len(v.messages), metaLine(v.messages[len(v.messages)-1]))
	}
}

// The command bar takes the classic commands through Do, says what went
// wrong in plain words, and completes commands and names.
func TestCommandBarRunsAndCompletes(t *testing.T) {
	f, app := loggedIn(t)
	b := app.bar
	b.open()
	test.Type(b.entry, "Send bob102 hi from the bar")
	b.entry.TypedKey(&fyne.KeyEvent{Name: fyne.KeyReturn})
	if b.answer.Text != "Message Sent!" || len(f.did) != 1 || f.did[0] != command.Usage[command.Send] {
		t.Fatalf("answer %q, did %v", b.answer.Text, f.did)
	}
	if app.chats.view.conv.Peer != "bob102" {
		t.Fatalf("the bar did not open the conversation: %+v", app.chats.view.conv)
	}
	b.run("Join nowhere")
	if b.answer.Text != `there is no group "nowhere"` {
		t.Fatalf("%q", b.answer.Text)
	}
	b.run("Send_group 3 g1")
	if !strings.Contains(b.answer.Text, "usage: Send_group") {
		t.Fatalf("%q", b.answer.Text)
	}
	b.entry.TypedKey(&fyne.KeyEvent{Name: fyne.KeyEscape})
	if b.popup.Visible() {
		t.Fatal("Escape left the command bar open")
	}
	b.open()
	// Completion: commands first, then the people of the conversations.
	b.entry.SetText("Send_g")
	b.entry.TypedKey(&fyne.KeyEvent{Name: fyne.KeyTab})
	if b.entry.Text != "Send_group" {
		t.Fatalf("completed to %q", b.entry.Text)
	}
	b.entry.SetText("Send b")
	b.entry.TypedKey(&fyne.KeyEvent{Name: fyne.KeyTab})
	if b.entry.Text != "Send bob102 " {
		t.Fatalf("completed to %q", b.entry.Text)
	}
}

// A conversation far longer than a page opens with one page, and older
// pages come on request.
func TestLongConversationLoadsInPages(t *testing.T) {
	f, app := loggedIn(t)
	for i := 0; i < 2*pageSize+10; i++ {
		f.add("@bob102", engine.Message{From: "bob102", Body: fmt.Sprint(i)}, "bob102", "")
	}
	app.chats.reload()
	app.chats.list.Select(0)
	v := app.chats.view
	if len(v.messages) != pageSize || v.older.Hidden {
		t.Fatalf("opened with %d messages, older button hidden %v", len(v.messages), v.older.Hidden)
	}
	test.Tap(v.older)
	test.Tap(v.older)
	if len(v.messages) != 2*pageSize+10 || v.messages[0].Body != "0" || !v.older.Hidden {
		t.Fatalf("after two pages: %d, first %q, button hidden %v", len(v.messages), v.messages[0].Body, v.older.Hidden)
	}
}

// A file goes to the open conversation (attached or dropped), its
// progress bar follows the transfer's events, Cancel cancels it, and it
// leaves the strip when it ends.
func TestTransfersFollowTheirEvents(t *testing.T) {
	f, app := loggedIn(t)
	f.add("@bob102", engine.Message{From: "bob102", Body: "send me the slides"}, "bob102", "")
	app.chats.reload()
	app.chats.list.Select(0)
	v := app.chats.view
	v.sendFile("/tmp/slides.pdf")
	v.dropped(fyne.NewPos(1, 1), []fyne.URI{storage.NewFileURI("/tmp/notes.txt")})
	if len(f.did) != 2 || f.did[0] != "SendFile /tmp/slides.pdf bob102" || f.did[1] != "SendFile /tmp/notes.txt bob102" {
		t.Fatalf("the engine was asked %v", f.did)
	}
	tr := engine.Transfer{ID: "t1", Outgoing: true, Peer: "bob102", Name: "slides.pdf", Size: 4 << 20, Total: 4 << 20, State: engine.TransferActive}
	for _, done := range []int64{1 << 20, 3 << 20} {
		tr.Done = done
		app.handle(engine.Event{Kind: engine.EventFileProgress, ID: "t1", Transfer: &tr})
	}
	row := v.transfers.rows["t1"]
	if row == nil || row.bar.Value != 0.75 || !strings.Contains(row.label.Text, "Sending slides.pdf: 3.1 MB of 4.2 MB") {
		t.Fatalf("the strip shows %+v", row)
	}
	test.Tap(row.cancel)
	if f.did[len(f.did)-1] != "Cancel t1" {
		t.Fatalf("Cancel asked %v", f.did)
	}
	tr.State = engine.TransferCancelled
	app.handle(engine.Event{Kind: engine.EventFileCancelled, ID: "t1", Transfer: &tr})
	if len(v.transfers.rows) != 0 || len(v.transfers.box.Objects) != 0 {
		t.Fatalf("a cancelled transfer stays: %d rows", len(v.transfers.rows))
	}
}

// A contact whose key changed gets a banner with Verify and Trust; Trust
// goes through the engine and the banner goes.
func TestKeyChangeBanner(t *testing.T) {
	f, app := loggedIn(t)
	f.add("@bob102", engine.Message{From: "bob102", Body: "new phone"}, "bob102", "")
	app.chats.reload()
	app.chats.list.Select(0)
	b := app.chats.view.banner
	if b.content.Visible() {
		t.Fatal("a banner before any change")
	}
	f.changed["bob102"] = true
	app.handle(engine.Event{Kind: engine.EventKeyChanged, Contact: "bob102", Text: "bob102's identity key changed"})
	if !b.content.Visible() || !strings.Contains(b.text.Text, "bob102's identity key changed") {
		t.Fatalf("banner visible %v: %q", b.content.Visible(), b.text.Text)
	}
	test.Tap(b.verify) // the safety number dialog opens (on the window's overlay)
	if len(app.win.Canvas().Overlays().List()) == 0 {
		t.Fatal("Verify showed nothing")
	}
	// Trust shows the number again and trusts only what was shown, once
	// the person says it matches.
	test.Tap(b.trust)
	if n := len(f.did); n > 0 && strings.HasPrefix(f.did[n-1], "Trust") {
		t.Fatal("trusted before the person compared the number")
	}
	tapButton(t, app.win.Canvas().Overlays().Top(), "They match: trust")
	want := "Trust bob102 12345 67890 12345 67890 12345 67890 12345 67890 12345 67890 12345 67890"
	if f.did[len(f.did)-1] != want || b.content.Visible() {
		t.Fatalf("after Trust: did %v, banner visible %v", f.did, b.content.Visible())
	}
}

// The group dialog searches, joins, creates, leaves and sends to several
// groups at once.
func TestGroupBrowser(t *testing.T) {
	f, app := loggedIn(t)
	g := app.groups
	g.open()
	if len(g.shown) != 3 || g.shown[0].Name != "chess" || g.shown[0].Members != 2 {
		t.Fatalf("groups: %+v", g.shown)
	}
	test.Type(g.search, "ch")
	if len(g.shown) != 2 {
		t.Fatalf("search ch: %+v", g.shown)
	}
	g.join("chess")
	g.join("choir")
	if !g.mine["chess"] || !g.mine["choir"] || g.status.Text != "Joined choir." {
		t.Fatalf("after joining: mine %v, %q", g.mine, g.status.Text)
	}
	// A row of a group you are in offers Leave.
	row := g.list.CreateItem()
	g.list.UpdateItem(0, row)
	join := row.(*fyne.Container).Objects[2].(*fyne.Container).Objects[1].(*widget.Button)
	if join.Text != "Leave" {
		t.Fatalf("the row offers %q", join.Text)
	}
	// Tick both and send once.
	g.selected["chess"], g.selected["choir"] = true, true
	test.Type(g.message, "practice at six")
	g.sendMessage()
	if f.did[len(f.did)-1] != "SendGroup chess,choir practice at six" || !strings.HasPrefix(g.status.Text, "Message Sent!") {
		t.Fatalf("did %v, %q", f.did, g.status.Text)
	}
	g.sendFile("/tmp/score.pdf", g.ticked())
	if f.did[len(f.did)-1] != "SendGroupFile /tmp/score.pdf chess,choir" {
		t.Fatalf("did %v", f.did)
	}
	test.Type(g.newName, "chess")
	g.create()
	if g.status.Text != `group "chess" already exists` {
		t.Fatalf("%q", g.status.Text)
	}
	g.newName.SetText("go")
	g.create()
	if !g.mine["go"] || len(g.all) != 4 {
		t.Fatalf("after creating: %v %v", g.mine, g.all)
	}
	g.leave("chess")
	if g.mine["chess"] {
		t.Fatal("still in chess after leaving")
	}
	g.showMembers("choir")
	if g.status.Text != "choir: bob102, alice101" {
		t.Fatalf("%q", g.status.Text)
	}
}

// A message while the window is in the background notifies, unless the
// person turned that off; in front, it does not.
func TestNotificationsInTheBackground(t *testing.T) {
	f, app := loggedIn(t)
	f.add("@bob102", engine.Message{From: "bob102", Body: "lunch?"}, "bob102", "")
	ev := engine.Event{Kind: engine.EventMessage, From: "bob102", Body: "lunch?"}
	test.AssertNotificationSent(t, nil, func() { app.handle(ev) })
	app.inBackground = true
	test.AssertNotificationSent(t, fyne.NewNotification("bob102 wrote to you", "lunch?"), func() { app.handle(ev) })
	app.fyne.Preferences().SetBool(PrefNotifications, false)
	test.AssertNotificationSent(t, nil, func() { app.handle(ev) })
}

// The window comes back at the size it had.
func TestWindowSizeIsRemembered(t *testing.T) {
	a := test.NewTempApp(t)
	a.Preferences().SetFloat(prefWidth, 1111)
	a.Preferences().SetFloat(prefHeight, 777)
	app := New(a, newFake(), nil)
	if got := app.win.Canvas().Size(); got.Width != 1111 || got.Height != 777 {
		t.Fatalf("opened at %v", got)
	}
	a.Preferences().SetFloat(prefWidth, 10) // not a size anyone chose
	if got := New(a, newFake(), nil).win.Canvas().Size(); got.Width != defaultWidth {
		t.Fatalf("opened at %v", got)
	}
}

// Search finds messages in every conversation; choosing one opens it.
func TestSearchOpensTheConversation(t *testing.T) {
	f, app := loggedIn(t)
	f.add("@bob102", engine.Message{From: "bob102", Body: "the slides are ready"}, "bob102", "")
	f.add("#chess", engine.Message{From: "cat103", Body: "board at six"}, "", "chess")
	app.chats.reload()
	c := app.chats
	test.Type(c.search, "SLIDES")
	c.search.TypedKey(&fyne.KeyEvent{Name: fyne.KeyReturn})
	if len(c.found) != 1 || c.found[0].Body != "the slides are ready" {
		t.Fatalf("found %+v", c.found)
	}
	c.search.SetText("nothing like this")
	c.search.TypedKey(&fyne.KeyEvent{Name: fyne.KeyReturn})
	if !strings.Contains(c.status.Text, "No message holds") {
		t.Fatalf("%q", c.status.Text)
	}
	c.openGroup("Chess")
	if c.view.conv.Group != "chess" || len(c.view.messages) != 1 {
		t.Fatalf("opened %+v with %d messages", c.view.conv, len(c.view.messages))
	}
}

func TestDeliveryStatesInWords(t *testing.T) {
	for want, m := range map[string]engine.Message{
		"queued":                 {State: engine.StateQueued},
		"sent":                   {State: engine.StateSent, Via: engine.ViaDirect},
		"sent via a relay":       {State: engine.StateSent, Via: engine.ViaRelay},
		"waiting in the mailbox": {State: engine.StateSent, Via: engine.ViaMailbox},
		"delivered":              {State: engine.StateDelivered, Via: engine.ViaMailbox},
		"delivered via a relay":  {State: engine.StateDelivered, Via: engine.ViaRelay},
	} {
		if got := stateText(m); got != want {
			t.Errorf("%+v: %q, want %q", m, got, want)
		}
	}
}

// tapButton taps the button labelled text inside o (a dialog, a screen).
func tapButton(t *testing.T, o fyne.CanvasObject, text string) {
	t.Helper()
	for _, obj := range test.LaidOutObjects(o) {
		if b, ok := obj.(*widget.Button); ok && b.Text == text {
			test.Tap(b)
			return
		}
	}
	t.Fatalf("no button %q", text)
}
