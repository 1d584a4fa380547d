'use strict';
'require view';
'require rpc';
'require poll';

/*
 * STAND-IN for LuCI's tools/views.js LogreadBox (see luci.js in this
 * directory): a view that reads the system log through ubus 'log read' and
 * shows the lines that carry the given tag. No filter controls.
 */

var callLogRead = rpc.declare({
	object: 'log',
	method: 'read',
	params: [ 'lines', 'stream', 'oneshot' ],
	expect: { log: [] }
});

function LogreadBox(tag, name) {
	return view.extend({
		retrieve: function() {
			return callLogRead(1000, false, true).then(function(entries) {
				return entries.filter(function(e) {
					return String(e.msg).toLowerCase().indexOf(tag.toLowerCase()) >= 0;
				}).map(function(e) {
					return '[%s] %s'.format(new Date(e.time).toISOString(), e.msg);
				}).join('\n');
			});
		},

		load: function() {
			poll.add(L.bind(function() {
				return this.retrieve().then(function(text) {
					document.getElementById('syslog').value = text;
				});
			}, this));
			return this.retrieve();
		},

		render: function(text) {
			return E([], [
				E('h2', {}, [ name ]),
				E('div', { 'class': 'cbi-section-descr' }, [ 'The syslog output, pre-filtered for messages related to: ' + tag ]),
				E('textarea', { 'id': 'syslog', 'readonly': 'readonly', 'wrap': 'off', 'rows': 25,
					'style': 'width:100%;font-size:12px' }, [ text ])
			]);
		},

		handleSaveApply: null,
		handleSave: null,
		handleReset: null
	});
}

return L.Class.extend({ LogreadBox: LogreadBox });
