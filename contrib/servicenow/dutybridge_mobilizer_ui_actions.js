/*
 * dutybridge response mobilizer: the four UI actions of the guide's "Use PagerDuty Actions
 * in ServiceNow", as client-side UI actions on the Incident form calling the
 * DutybridgeMobilizer Script Include (dutybridge_mobilizer.js) through GlideAjax.
 *
 * For each function below: System Definition > UI Actions > New
 *   Table = Incident [incident], Form button = checked, Client = checked,
 *   Onclick = <the function name>(), e.g. dutybridgeAddResponders()
 *   Condition = gs.hasRole('x_pd_integration.incident_response') && current.correlation_display == 'PagerDuty'
 *   Script = this whole file (each UI action uses one of its functions).
 * The condition only hides the button; the daemon checks the role itself.
 *
 * Browser ES5. Prompts keep the example short; a GlideModal form can replace them.
 */
function dutybridgeAsk(method, params, done) {
    var ajax = new GlideAjax('DutybridgeMobilizer');
    ajax.addParam('sysparm_name', method);
    ajax.addParam('sysparm_number', g_form.getValue('number'));
    for (var key in params) {
        if (params.hasOwnProperty(key)) {
            ajax.addParam(key, params[key]);
        }
    }
    ajax.getXMLAnswer(function (answer) {
        var result;
        try {
            result = JSON.parse(answer);
        } catch (e) {
            result = {error: 'unexpected answer from dutybridge'};
        }
        if (result.error) {
            g_form.addErrorMessage('PagerDuty: ' + result.error);
            return;
        }
        done(result);
    });
}

function dutybridgeAddResponders() {
    var users = prompt('PagerDuty responders: ServiceNow user names, comma-separated (may be empty)', '');
    if (users === null) { return; }
    var groups = prompt('Assignment groups whose escalation policy to request, comma-separated (may be empty)', '');
    if (groups === null) { return; }
    var message = prompt('Message to the responders (optional)', '') || '';
    var bridge = prompt('Conference bridge to add, by name (optional)', '') || '';
    dutybridgeAsk('addResponders', {sysparm_users: users, sysparm_groups: groups, sysparm_message: message,
                                    sysparm_bridge: bridge}, function (r) {
        var names = r.responder_request.targets.map(function (t) { return t.summary || t.id; });
        g_form.addInfoMessage('PagerDuty: responders requested: ' + names.join(', '));
    });
}

function dutybridgeAddConferenceBridge() {
    dutybridgeAsk('listBridges', {}, function (list) {
        var names = list.bridges.map(function (b) { return b.name; });
        var bridge = prompt('Conference bridge' + (names.length ? ' (' + names.join(', ') + ')' : '') +
            '; leave empty to enter a dial-in number / URL', '');
        if (bridge === null) { return; }
        var params = {sysparm_bridge: bridge};
        if (!bridge) {
            params.sysparm_dial_in = prompt('Dial-in number (optional)', '') || '';
            params.sysparm_url = prompt('Meeting URL (optional)', '') || '';
        }
        dutybridgeAsk('setBridge', params, function () {
            g_form.addInfoMessage('PagerDuty: conference bridge added (see the work notes)');
        });
    });
}

function dutybridgeRunResponsePlay() {
    dutybridgeAsk('listWorkflows', {}, function (list) {
        var names = list.workflows.concat(list.response_plays).map(function (w) { return w.name; });
        if (!names.length) {
            g_form.addErrorMessage('PagerDuty: no incident workflow to run');
            return;
        }
        var choice = prompt('Run which incident workflow? ' + names.join(' | '), names[0]);
        if (!choice) { return; }
        dutybridgeAsk('runWorkflow', {sysparm_workflow: choice}, function (r) {
            g_form.addInfoMessage('PagerDuty: started ' + r.ran.name);
        });
    });
}

function dutybridgeSendStatusUpdate() {
    dutybridgeAsk('statusPreview', {}, function (preview) {
        var impacted = preview.impacted_business_services.map(function (b) { return b.name; });
        var header = (impacted.length ? 'Impacted Business Service: ' + impacted.join(', ') + '\n' : '') +
            (preview.notice ? preview.notice + '\n' : '');
        var message = prompt(header + 'Status update:', '');
        if (!message) { return; }
        dutybridgeAsk('sendStatus', {sysparm_message: message}, function (r) {
            g_form.addInfoMessage('PagerDuty: status update sent' + (r.published ? ' and published to the status dashboard' : ''));
        });
    });
}
