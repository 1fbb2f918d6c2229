/** Who is signed in, and their teams: loaded once by the dashboard's shell, refreshed on a team switch. */
import { api, call, raw } from './api/client';
import type { Me, Team } from './api/types';

class SessionState {
	me = $state<Me | null>(null);
	teams = $state<Team[]>([]);

	get team(): Team | undefined {
		return this.teams.find((t) => t.id === this.me?.team_id);
	}

	/** Owner or admin of the current team. */
	get manager(): boolean {
		return this.me?.role === 'owner' || this.me?.role === 'admin';
	}

	/** The signed-in user and their teams; null without a session (no request fails for that). */
	async load(): Promise<Me | null> {
		const found = (await call(api.GET('/v1/dashboard/session'))) as { me: Me | null };
		this.me = found.me;
		this.teams = found.me ? await call(api.GET('/v1/teams')) : [];
		return found.me;
	}

	async switchTeam(teamId: string): Promise<void> {
		await call(api.POST('/v1/dashboard/switch-team', { body: { team_id: teamId } }));
		await this.load();
	}

	async signOut(): Promise<void> {
		await raw('/v1/dashboard/session', { method: 'DELETE' });
		this.me = null;
		this.teams = [];
	}
}

export const session = new SessionState();
