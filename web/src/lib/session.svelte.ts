/** Who is signed in, and their teams: loaded once by the dashboard's shell, refreshed on a team switch. */
import { api, call, raw } from './api/client';
import type { Me, Team } from './api/types';

class SessionState {
	me = $state<Me | null>(null);
	teams = $state<Team[]>([]);
	/** The domain capsule ports are served under (`WRENN_SANDBOX_DOMAIN`); "": the dashboard's own. */
	sandboxDomain = $state('');

	get team(): Team | undefined {
		return this.teams.find((t) => t.id === this.me?.team_id);
	}

	/** Owner or admin of the current team. */
	get manager(): boolean {
		return this.me?.role === 'owner' || this.me?.role === 'admin';
	}

	/** The signed-in user, null without a session (no request fails for that). Their teams (for the
	 * switcher) follow in the background: pages need not wait for them. */
	async load(): Promise<Me | null> {
		const found = (await call(api.GET('/v1/dashboard/session'))) as { me: Me | null; sandbox_domain?: string };
		this.me = found.me;
		this.sandboxDomain = found.sandbox_domain ?? '';
		if (found.me) this.loadTeams();
		else this.teams = [];
		return found.me;
	}

	async loadTeams(): Promise<void> {
		try {
			this.teams = await call(api.GET('/v1/teams'));
		} catch {
			this.teams = [];
		}
	}

	async switchTeam(teamId: string): Promise<void> {
		await call(api.POST('/v1/dashboard/switch-team', { body: { team_id: teamId } }));
		await this.load();
		await this.loadTeams();
	}

	async signOut(): Promise<void> {
		await raw('/v1/dashboard/session', { method: 'DELETE' });
		this.me = null;
		this.teams = [];
	}
}

export const session = new SessionState();
