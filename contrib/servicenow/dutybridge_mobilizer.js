/*
 * dutybridge response mobilizer: a client-callable Script Include (GlideAjax) that calls
 * the daemon's /api/v1/incidents/{number}/{action} API for the UI actions in
 * dutybridge_mobilizer_ui_actions.js. The acting user is the session's user
 * (gs.getUserName()), never a value from the browser, so nobody can act as someone else;
 * the daemon checks that user's role (x_pd_integration.incident_response) again in
 * sys_user_has_role before acting, and acts in PagerDuty as that user.
 *
 * Script Include: Name = DutybridgeMobilizer, Client callable = checked,
 * Accessible from = All application scopes (or this application only).
 *
 * System properties (see README.md):
 *   x_dutybridge.mobilizer_url    https://dutybridge.example.com  (the daemon's base URL)
 *   x_dutybridge.mobilizer_token  [plugins.response_mobilizer] api_token (type password2)
 *   x_dutybridge.mid_server       optional: MID server name, as for the doorbell
 *
 * Every method answers a JSON string: the daemon's answer, or {"error": "..."}.
 * Rhino ES5: no let/const, no arrow functions.
 */
var DutybridgeMobilizer = Class.create();
DutybridgeMobilizer.prototype = Object.extendsObject(global.AbstractAjaxProcessor, {
    PREFIX: 'x_dutybridge.',

    /* Send one API call; returns the answer as a JSON string. */
    call: function (number, action, method, body) {
        var base = gs.getProperty(this.PREFIX + 'mobilizer_url', '');
        var token = gs.getProperty(this.PREFIX + 'mobilizer_token', '');
        if (!base || !token) {
            return JSON.stringify({error: 'system properties ' + this.PREFIX + 'mobilizer_url and ' +
                this.PREFIX + 'mobilizer_token must be set'});
        }
        var request = new sn_ws.RESTMessageV2();
        request.setEndpoint(base.replace(/\/+$/, '') + '/api/v1/incidents/' + encodeURIComponent(number) + '/' + action);
        request.setHttpMethod(method);
        request.setRequestHeader('Authorization', 'Bearer ' + token);
        request.setRequestHeader('Accept', 'application/json');
        request.setHttpTimeout(20000);
        var mid = gs.getProperty(this.PREFIX + 'mid_server', '');
        if (mid) {
            request.setMIDServer(mid);
        }
        if (method === 'POST') {
            body = body || {};
            body.requested_by = gs.getUserName();
            request.setRequestHeader('Content-Type', 'application/json');
            request.setRequestBody(JSON.stringify(body));
        }
        try {
            var response = request.execute();
            var text = response.getBody();
            if (!text) {
                return JSON.stringify({error: 'dutybridge answered ' + response.getStatusCode() + ' with no body'});
            }
            return text;
        } catch (e) {
            gs.warn('dutybridge mobilizer: ' + action + ' failed: ' + e);
            return JSON.stringify({error: 'cannot reach dutybridge: ' + e});
        }
    },

    /* The incident's number, from the ajax parameter sysparm_number. */
    _number: function () {
        return String(this.getParameter('sysparm_number') || '');
    },

    _list: function (name) {
        var value = String(this.getParameter(name) || '');
        return value ? value.split(',').map(function (s) { return s.trim(); }).filter(function (s) { return s; }) : [];
    },

    /* Add Responders: sysparm_users, sysparm_groups (comma-separated user_names / group names),
       sysparm_message, optional sysparm_bridge (a configured bridge's name). */
    addResponders: function () {
        var body = {users: this._list('sysparm_users'), groups: this._list('sysparm_groups')};
        var message = String(this.getParameter('sysparm_message') || '');
        if (message) {
            body.message = message;
        }
        var bridge = String(this.getParameter('sysparm_bridge') || '');
        if (bridge) {
            body.conference_bridge = {name: bridge};
        }
        return this.call(this._number(), 'responders', 'POST', body);
    },

    /* Add Conference Bridge: sysparm_bridge (a configured name) or sysparm_dial_in / sysparm_url. */
    setBridge: function () {
        var bridge = String(this.getParameter('sysparm_bridge') || '');
        var body = bridge ? {name: bridge} : {};
        if (!bridge) {
            var dialIn = String(this.getParameter('sysparm_dial_in') || '');
            var url = String(this.getParameter('sysparm_url') || '');
            if (dialIn) { body.dial_in_number = dialIn; }
            if (url) { body.url = url; }
        }
        return this.call(this._number(), 'conference-bridge', 'POST', body);
    },

    listBridges: function () {
        return this.call(this._number(), 'conference-bridge', 'GET');
    },

    /* Run Response Play: incident workflows first (PagerDuty's successor to response plays). */
    listWorkflows: function () {
        return this.call(this._number(), 'workflows', 'GET');
    },

    runWorkflow: function () {
        return this.call(this._number(), 'workflows', 'POST', {workflow: String(this.getParameter('sysparm_workflow') || '')});
    },

    /* Send Status Update: the preview says which business services are impacted and
       whether the update is published to the status dashboard. */
    statusPreview: function () {
        return this.call(this._number(), 'status-updates', 'GET');
    },

    sendStatus: function () {
        return this.call(this._number(), 'status-updates', 'POST', {message: String(this.getParameter('sysparm_message') || '')});
    },

    type: 'DutybridgeMobilizer'
});
