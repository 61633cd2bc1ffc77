package ui

import (
	"context"
	"strings"

	"fyne.io/fyne/v2"
	"fyne.io/fyne/v2/container"
	"fyne.io/fyne/v2/widget"

	"github.com/e2em/e2em/desktop/engine/command"
)

// prefLastLogin remembers the last login id on this machine.
const prefLastLogin = "last_login_id"

// loginScreen is where a person logs in, or signs up first.
type loginScreen struct {
	app *App

	loginID, password                    *widget.Entry
	username, roll, newPassword, confirm *widget.Entry
	loginButton, signUpButton            *widget.Button
	status                               *widget.Label
	content                              fyne.CanvasObject
}

func newLoginScreen(app *App) *loginScreen {
	l := &loginScreen{app: app, status: widget.NewLabel("")}
	l.status.Wrapping = fyne.TextWrapWord
	l.loginID = widget.NewEntry()
	l.loginID.SetPlaceHolder("login id, e.g. alice101")
	l.loginID.SetText(app.fyne.Preferences().String(prefLastLogin))
	l.password = widget.NewPasswordEntry()
	l.password.OnSubmitted = func(string) { l.logIn() }
	l.loginButton = widget.NewButton("Log in", l.logIn)
	l.loginButton.Importance = widget.HighImportance

	l.username, l.roll = widget.NewEntry(), widget.NewEntry()
	l.username.SetPlaceHolder("username, e.g. alice")
	l.roll.SetPlaceHolder("roll number, e.g. 101")
	l.newPassword, l.confirm = widget.NewPasswordEntry(), widget.NewPasswordEntry()
	l.signUpButton = widget.NewButton("Sign up", l.signUp)

	logIn := widget.NewForm(widget.NewFormItem("Login id", l.loginID), widget.NewFormItem("Password", l.password))
	signUp := widget.NewForm(widget.NewFormItem("Username", l.username), widget.NewFormItem("Roll number", l.roll),
		widget.NewFormItem("Password", l.newPassword), widget.NewFormItem("Again", l.confirm))
	tabs := container.NewAppTabs(
		container.NewTabItem("Log in", container.NewVBox(logIn, l.loginButton)),
		container.NewTabItem("Sign up", container.NewVBox(signUp, l.signUpButton)),
	)
	title := widget.NewLabelWithStyle("e2em", fyne.TextAlignCenter, fyne.TextStyle{Bold: true})
	l.content = container.NewCenter(container.NewGridWrap(fyne.NewSize(420, 360),
		container.NewBorder(title, l.status, nil, nil, tabs)))
	return l
}

func (l *loginScreen) busy(on bool) {
	if on {
		l.loginButton.Disable()
		l.signUpButton.Disable()
		return
	}
	l.loginButton.Enable()
	l.signUpButton.Enable()
}

func (l *loginScreen) logIn() {
	id := command.NormalizeRecipient(strings.TrimSpace(l.loginID.Text))
	if id == "" || l.password.Text == "" {
		l.status.SetText("Give your login id and password.")
		return
	}
	password := l.password.Text
	l.busy(true)
	l.status.SetText("Logging in…")
	l.app.background(func(ctx context.Context) error { return l.app.eng.Login(ctx, id, password) }, func(err error) {
		l.busy(false)
		if err != nil {
			l.status.SetText(words(err))
			return
		}
		l.password.SetText("")
		l.status.SetText("")
		l.app.fyne.Preferences().SetString(prefLastLogin, l.app.eng.LoginID())
		l.app.showChats()
	})
}

func (l *loginScreen) signUp() {
	user, roll := strings.TrimSpace(l.username.Text), strings.TrimSpace(l.roll.Text)
	switch {
	case user == "" || roll == "" || l.newPassword.Text == "":
		l.status.SetText("Give a username, a roll number and a password.")
		return
	case l.newPassword.Text != l.confirm.Text:
		l.status.SetText("The two passwords differ.")
		return
	}
	password := l.newPassword.Text
	var id string
	l.busy(true)
	l.status.SetText("Signing up…")
	l.app.background(func(ctx context.Context) (err error) {
		id, err = l.app.eng.SignUp(ctx, user, roll, password)
		return err
	}, func(err error) {
		l.busy(false)
		if err != nil {
			l.status.SetText(words(err))
			return
		}
		l.newPassword.SetText("")
		l.confirm.SetText("")
		l.loginID.SetText(id)
		l.status.SetText("Signed up. Your login id is " + id + "; log in with it.")
	})
}
