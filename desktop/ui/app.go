// Package ui is the desktop app's face: one file per screen, each a thin
// view over the client engine. Every action goes through the same engine
// API the headless client uses (Login, Do, Send, Conversations, …), and
// what the window shows comes from the engine's events. It holds no
// protocol or storage code.
package ui

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"time"

	"fyne.io/fyne/v2"

	"github.com/e2em/e2em/desktop/engine"
	"github.com/e2em/e2em/desktop/engine/command"
)

// Engine is what the window asks of the client engine (*engine.Engine
// has all of it; widget tests use a fake).
type Engine interface {
	LoginID() string
	SignUp(ctx context.Context, username, roll, password string) (string, error)
	Login(ctx context.Context, loginID, password string) error
	Do(ctx context.Context, c *command.Command) (engine.Result, error)
	Send(ctx context.Context, to, text string) (string, error)
	SendGroup(ctx context.Context, groups []string, text string) (int, error)
	Conversations() ([]engine.Conversation, error)
	HistoryPage(conversation string, before uint64, n int) ([]engine.Message, error)
	MarkRead(conversation string) error
	SendFile(ctx context.Context, path, to string) (string, error)
	SendGroupFile(ctx context.Context, path string, groups ...string) (string, error)
	Cancel(ctx context.Context, id string) (engine.Transfer, error)
	SafetyNumber(ctx context.Context, contact string) (string, error)
	Trust(ctx context.Context, contact, safetyNumber string) error
	ListGroups(ctx context.Context) ([]engine.Group, error)
	MyGroups(ctx context.Context) ([]engine.Group, error)
	CreateGroup(ctx context.Context, name string) (string, error)
	JoinGroup(ctx context.Context, name string) (string, error)
	LeaveGroup(ctx context.Context, name string) (string, error)
	Members(ctx context.Context, name string) (string, []string, error)
	Downloads() string
	Search(text string, limit int) ([]engine.Message, error)
}

// App is the window and what it shows.
type App struct {
	fyne fyne.App
	win  fyne.Window
	eng  Engine

	login  *loginScreen
	chats  *chatsScreen
	bar    *commandBar
	groups *groupBrowser

	// inline runs engine calls on the caller's goroutine (widget tests:
	// the test driver has no event loop to hand results back to).
	inline bool
	// background: the window is not in front (messages then notify).
	inBackground bool
}

// callTimeout bounds one engine call made for the window.
const callTimeout = 30 * time.Second

// New builds the window over eng; events is the engine's event stream
// for this window (a Subscription's channel).
func New(a fyne.App, eng Engine, events <-chan engine.Event) *App {
	app := &App{fyne: a, win: a.NewWindow("e2em"), eng: eng}
	app.login = newLoginScreen(app)
	app.chats = newChatsScreen(app)
	app.bar = newCommandBar(app)
	app.groups = newGroupBrowser(app)
	app.rememberSize()
	app.win.Canvas().AddShortcut(commandBarShortcut, func(fyne.Shortcut) { app.bar.open() })
	a.Lifecycle().SetOnExitedForeground(func() { app.inBackground = true })
	a.Lifecycle().SetOnEnteredForeground(func() { app.inBackground = false })
	if eng.LoginID() != "" {
		app.showChats()
	} else {
		app.win.SetContent(app.login.content)
	}
	if events != nil {
		go func() {
			for ev := range events {
				fyne.Do(func() { app.handle(ev) })
			}
		}()
	}
	return app
}

// Window is the app's window.
func (app *App) Window() fyne.Window { return app.win }

// showChats switches to the conversations once someone is logged in.
func (app *App) showChats() {
	app.win.SetTitle("e2em — " + app.eng.LoginID())
	app.win.SetContent(app.chats.content)
	app.chats.reload()
}

// handle updates what is shown after an event (on the window's thread).
func (app *App) handle(ev engine.Event) {
	switch ev.Kind {
	case engine.EventMessage:
		app.chats.reload()
		app.notify(ev)
	case engine.EventDelivered, engine.EventSent, engine.EventPresence, engine.EventMissed:
		app.chats.reload()
	case engine.EventFileDone:
		if ev.Transfer != nil {
			app.chats.view.transfers.update(*ev.Transfer)
		}
		app.chats.reload()
	case engine.EventConnection:
		app.chats.setStatus(ev)
	case engine.EventFileOffered, engine.EventFileProgress, engine.EventFileWaiting, engine.EventFileCancelled:
		if ev.Transfer != nil {
			app.chats.view.transfers.update(*ev.Transfer)
		}
	case engine.EventFileFailed:
		if ev.Transfer != nil {
			app.chats.view.transfers.update(*ev.Transfer)
		}
		app.chats.notice(ev.Text)
	case engine.EventKeyChanged:
		app.chats.reload() // the banner
		app.chats.notice(ev.Text)
	case engine.EventSecurity, engine.EventWaiting:
		app.chats.notice(ev.Text)
	}
}

// notify tells of a message while the window is in the background (and
// the person wants that).
func (app *App) notify(ev engine.Event) {
	if !app.inBackground || !app.fyne.Preferences().BoolWithFallback(PrefNotifications, true) {
		return
	}
	title := fmt.Sprintf(notifyTitleFormat, ev.From)
	if ev.Group != "" {
		title = ev.From + " in " + ev.Group
	}
	body := []rune(ev.Body)
	if len(body) > notifyBodyMax {
		body = append(body[:notifyBodyMax], '…')
	}
	app.fyne.SendNotification(fyne.NewNotification(title, string(body)))
}

// openFile opens a received file with the system's application for it.
func (app *App) openFile(path string) {
	if err := app.fyne.OpenURL(&url.URL{Scheme: "file", Path: path}); err != nil {
		app.chats.notice("Cannot open " + path + ": " + err.Error())
	}
}

// homeDir is where file dialogs start.
func (app *App) homeDir() string {
	if home, err := os.UserHomeDir(); err == nil {
		return home
	}
	return "/"
}

// background runs an engine call off the window's thread and hands its
// error (or nil) back on it.
func (app *App) background(call func(ctx context.Context) error, done func(error)) {
	if app.inline {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		err := call(ctx)
		cancel()
		done(err)
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
		err := call(ctx)
		cancel()
		fyne.Do(func() { done(err) })
	}()
}
