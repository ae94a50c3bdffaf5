// Who is using the console: log in (POST /auth/token), log out, register when registration is
// open, and who am I (GET /auth/me, which also says the role). The token is the Api's, kept in
// sessionStorage.

import { $ } from "./dom.js";

export class Session {
  constructor(app) {
    this.app = app;
    this.api = app.api;
    this.user = null; // {username, role}
    this.registrationOpen = false;
    this.status = $("#session-status");
    this.loginButton = $("#login-open");
    this.registerButton = $("#register-open");
    this.logoutButton = $("#logout");
    this.dialog = $("#login-dialog");
    this.form = $("#login-form");
    this.formError = $("#login-error");
    this.mode = "login";

    this.loginButton.addEventListener("click", () => this.open("login"));
    this.registerButton.addEventListener("click", () => this.open("register"));
    this.logoutButton.addEventListener("click", () => this.logout());
    $("#login-cancel").addEventListener("click", () => this.dialog.close());
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    this.api.onUnauthorized = (error) => this.expired(error);
  }

  async start() {
    const probes = [this.probeRegistration()];
    if (this.api.token) probes.push(this.whoAmI());
    await Promise.all(probes);
    this.render();
  }

  async probeRegistration() {
    try {
      this.registrationOpen = await this.api.registrationOpen();
    } catch (error) {
      this.registrationOpen = false;
    }
  }

  async whoAmI() {
    try {
      this.user = await this.api.me();
    } catch (error) {
      this.user = null;
      if (error.status !== 401) this.app.notices.error(`Who am I: ${error.detail}`);
    }
  }

  /** The login dialog; why: a line saying why it opened by itself (null when asked for). */
  open(mode, why = null) {
    this.mode = mode;
    $("#login-why").textContent = why ?? "";
    $("#login-why").hidden = !why;
    const registering = mode === "register";
    $("#login-title").textContent = registering ? "Register" : "Log in";
    $("#login-submit").textContent = registering ? "Register and log in" : "Log in";
    $("#login-password").autocomplete = registering ? "new-password" : "current-password";
    $("#login-hint").hidden = !registering;
    this.formError.textContent = "";
    this.dialog.showModal();
    $("#login-username").focus();
  }

  async submit() {
    const username = $("#login-username").value;
    const password = $("#login-password").value;
    const submit = $("#login-submit");
    submit.disabled = true;
    this.formError.textContent = "";
    try {
      if (this.mode === "register") await this.api.register(username, password);
      const answer = await this.api.login(username, password);
      this.api.setToken(answer.access_token);
      this.user = await this.api.me();
      $("#login-password").value = "";
      this.dialog.close();
      this.app.notices.success(this.mode === "register" ? `Registered and logged in as ${this.user.username}.` : `Logged in as ${this.user.username}.`);
      this.changed();
    } catch (error) {
      // Said once: the server's detail may already say when to retry.
      const retry = error.retryAfter && !/retry/i.test(error.detail) ? ` (retry in ${error.retryAfter} s)` : "";
      this.formError.textContent = `${error.detail}${retry}`;
    } finally {
      submit.disabled = false;
    }
  }

  async logout() {
    // Logging out ends the session's transaction on the server: its staged writes are lost.
    const transactions = this.app.transactions;
    const holding = transactions.mine;
    if (holding) {
      const count = transactions.stagedCount();
      const ok = await this.app.confirm(
        "Log out and roll back your transaction?",
        `You hold a transaction (depth ${transactions.state.depth}) with ${count} staged write${count === 1 ? "" : "s"} from this tab. ` +
          "Logging out rolls it back, every level: nothing of it is applied.",
        "Log out and roll back",
      );
      if (!ok) return;
    }
    try {
      await this.api.logout();
      this.app.notices.success(holding ? "Logged out: your transaction was rolled back, nothing of it applied." : "Logged out.");
    } catch (error) {
      if (error.status !== 401) this.app.notices.error(`Log out: ${error.detail}`);
    }
    this.api.setToken(null);
    this.user = null;
    this.changed();
  }

  /** A request with our token got 401: it expired, was revoked, or the server restarted. */
  expired(error) {
    this.api.setToken(null);
    this.user = null;
    this.app.notices.error(`You are logged out: ${error.detail}. Log in again.`);
    this.changed();
  }

  changed() {
    this.render();
    this.app.identityChanged();
  }

  render() {
    const user = this.user;
    this.status.replaceChildren();
    if (user) {
      const name = document.createElement("strong");
      name.textContent = user.username;
      const role = document.createElement("span");
      role.className = `badge role-${user.role}`;
      role.textContent = user.role;
      this.status.append("Logged in as ", name, " ", role);
    } else {
      this.status.textContent = "Not logged in";
    }
    this.loginButton.hidden = Boolean(user);
    this.registerButton.hidden = Boolean(user) || !this.registrationOpen;
    this.logoutButton.hidden = !user;
  }
}
